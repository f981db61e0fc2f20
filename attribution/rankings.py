"""Orders of components, most important first, for the evaluation curves."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def rank_by(scores: ArrayLike) -> np.ndarray:
    """Component indices sorted by descending score; ties keep index order.

    ``scores`` of any shape are flattened in C order, so a ``[layers, heads]`` matrix
    gives flat indices ``layer * n_heads + head``.

    Returns:
        int64 ``[n_components]`` permutation, most important (highest score) first.
    """
    flat = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(flat).any():
        raise ValueError("scores contain NaN, which has no rank")
    # Negating float64 (not the input dtype) avoids unsigned wrap-around; the stable
    # sort keeps tied components in index order.
    return np.argsort(-flat, kind="stable").astype(np.int64)


def random_ranking(n_components: int, seed: int = 0) -> np.ndarray:
    """A random permutation of ``range(n_components)`` (int64), the chance baseline."""
    if n_components <= 0:
        raise ValueError(f"n_components must be positive, got {n_components}")
    return np.random.default_rng(seed).permutation(n_components).astype(np.int64)
