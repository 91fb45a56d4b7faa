"""Adapters between autoassist's engine and data-loading frameworks.

Imported as ``autoassist.pipelines`` (the folder ``pipelines/`` is mapped there by pyproject).
- ``base``: ``EngineLoader``, the loaders' base (epoch state, ``report``, state, closing).
- ``dataloader``: ``wrap(torch.utils.data.DataLoader)`` — the shrinking loader.
- ``keyed``, ``nodes``: iterable-style datasets and a ``torchdata.nodes`` source.
- ``fairseq_task``, ``fairseq_criterion``: the fairseq plugin (``--user-dir`` is
  ``fairseq_user_dir/autoassist_fairseq``, printed by ``autoassist fairseq-user-dir``).
"""
