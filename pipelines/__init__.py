"""Adapters between autoassist's engine and data-loading frameworks.

Imported as ``autoassist.pipelines`` (the folder ``pipelines/`` is mapped there by pyproject).
- ``dataloader``: ``wrap(torch.utils.data.DataLoader)`` — the shrinking loader.
"""
