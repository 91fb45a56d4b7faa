"""The fairseq ``--user-dir`` entry point: ``--user-dir "$(autoassist fairseq-user-dir)"``.

fairseq imports this folder as a top-level module. It registers the task and the criterion by
importing their one real home (``autoassist.pipelines``), so they register once however this
folder is reached.
"""

from autoassist.pipelines import fairseq_criterion, fairseq_task  # noqa: F401  (registration)
