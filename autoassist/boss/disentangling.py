"""How class-specific a layer's features are: DeepFacto's "supervised disentangling", measured.

Class selectivity of feature j (Morcos et al. 2018): with ``m_c`` the mean activation of j over
the instances of class c, ``(max_c m_c - mean_{c != argmax} m_c) / (max_c m_c + mean_{c !=
argmax} m_c)``. It is 0 when j responds to every class alike and 1 when it responds to one
class only. It needs non-negative features (NMF codes, ReLU outputs); negative values are an
error rather than a silently wrong index.
"""

from __future__ import annotations

import torch


def class_selectivity(features: torch.Tensor, labels: torch.Tensor,
                      num_classes: int | None = None) -> torch.Tensor:
    """Per-feature class selectivity of ``features`` ([n, d], >= 0) given ``labels`` ([n])."""
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
        raise ValueError(f"need features [n, d] and labels [n]; got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    if float(features.min()) < 0:
        raise ValueError("class selectivity needs non-negative features (NMF codes, ReLU "
                         "outputs); shift or rectify them first")
    C = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=C).to(features.dtype)
    if bool((counts == 0).any()):
        raise ValueError(f"class(es) {torch.nonzero(counts == 0).flatten().tolist()} have no "
                         "instance: pass a sample that covers every class")
    sums = torch.zeros(C, features.shape[1], dtype=features.dtype)
    sums.index_add_(0, labels, features)
    means = sums / counts[:, None]  # [C, d]
    top = means.max(0).values
    rest = (means.sum(0) - top) / (C - 1)
    return ((top - rest) / (top + rest).clamp_min(1e-12)).clamp(0, 1)


def sparsity(features: torch.Tensor, rel: float = 1e-3) -> float:
    """Fraction of entries below ``rel`` times the largest: how many features stay silent."""
    return float((features.abs() <= rel * features.abs().max()).float().mean())
