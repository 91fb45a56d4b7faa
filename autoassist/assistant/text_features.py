"""Assistant features for sentence pairs: hashed TF-IDF bags of source and target subwords,
plus lengths.

The published translation Assistant used TF-IDF of source and target tokens plus length features:
cheap to compute once, and enough for a linear model to tell hard pairs (rare words, long
sentences) from easy ones. Tokens are hashed (scikit-learn's ``HashingVectorizer``), so the width
is fixed whatever the vocabulary, and the table is computed once for the whole corpus, so the Boss
pays nothing per batch. Pure NumPy/scikit-learn: no fairseq or torch needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_tokens(ids) -> list[str]:
    return [str(int(t)) for t in np.asarray(ids).reshape(-1)]


def _hashed_tfidf(docs: Sequence, dim: int) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    counts = HashingVectorizer(n_features=dim, analyzer=_as_tokens, alternate_sign=False,
                               norm=None).transform(docs)
    weighted = TfidfTransformer(sublinear_tf=True).fit_transform(counts)  # rows L2-normalised
    return weighted.toarray().astype(np.float32, copy=False)


def sentence_pair_features(sources: Sequence, targets: Sequence | None = None, *,
                           dim: int = 32) -> np.ndarray:
    """One row per pair: ``[tfidf(source) (dim), tfidf(target) (dim), z(log len src), z(log len
    tgt)]``; ``targets=None`` (monolingual data) drops the target block and its length.

    ``sources[i]`` / ``targets[i]`` are token-id sequences (lists, arrays or tensors).
    """
    if dim < 1:
        raise ValueError(f"dim={dim}: the hashed bag needs at least one bucket per side")
    n = len(sources)
    if n == 0:
        raise ValueError("sentence_pair_features got an empty corpus")
    if targets is not None and len(targets) != n:
        raise ValueError(f"{n} source sentences but {len(targets)} target sentences: "
                         "the corpus must be aligned pair by pair")
    sides = [sources] if targets is None else [sources, targets]
    blocks = [_hashed_tfidf(side, dim) for side in sides]
    for side in sides:
        lengths = np.log1p(np.fromiter((len(s) for s in side), np.float64, count=n))
        std = lengths.std()
        blocks.append(((lengths - lengths.mean()) / (std if std > 0 else 1.0))
                      .astype(np.float32)[:, None])
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))
