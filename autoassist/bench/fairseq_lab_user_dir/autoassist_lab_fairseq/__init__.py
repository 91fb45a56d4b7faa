"""The laboratory's fairseq ``--user-dir``: ``fairseq_random_subset.LAB_USER_DIR``.

fairseq imports this folder as a top-level module; it registers the control task by importing
its one real home.
"""

from autoassist.bench import fairseq_random_subset  # noqa: F401  (registration)
