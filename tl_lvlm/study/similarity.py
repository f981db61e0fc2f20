"""Semantics against appearance: how alike the attributions of pairs of samples are.

Samples carry a class (the object) and a style (its rendering: photo, sketch, clipart;
for digits inverted, thickened, ...). Pairs of per-sample attribution vectors fall into the
kinds of :data:`PAIR_KINDS`; the paper's finding is that *same class, different style*
pairs are more alike than *different class, same style* pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from attribution import rank_by

#: The pair kinds, in the order they are reported. An *item* is one source picture drawn in
#: several styles (the same scan of a digit); items default to one per sample.
PAIR_KINDS = (
    "same class, different style",
    "same item, different style",
    "different class, same style",
    "different class, different style",
)
SEMANTIC, APPEARANCE = PAIR_KINDS[0], PAIR_KINDS[2]


def cosine_matrix(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n n"]:
    """Cosine similarity between all rows of ``x``."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def jaccard_matrix(coef: Float[np.ndarray, "n d"], k: int = 10) -> Float[np.ndarray, "n n"]:
    """Jaccard index of the top-``k`` components of every pair of rows."""
    top = np.zeros(coef.shape, dtype=np.float64)
    for row, c in zip(top, coef, strict=True):
        row[rank_by(c)[:k]] = 1
    shared = top @ top.T
    return shared / (2 * k - shared)


def pair_kinds(
    cls: Int[np.ndarray, " n"], style: Int[np.ndarray, " n"], item: Int[np.ndarray, " n"]
) -> dict[str, Bool[np.ndarray, "n n"]]:
    """Boolean ``[n, n]`` masks of each pair kind over distinct pairs (upper triangle)."""
    cls, style, item = (np.asarray(a) for a in (cls, style, item))
    upper = np.triu(np.ones((len(cls), len(cls)), dtype=bool), k=1)
    same_cls = cls[:, None] == cls[None, :]
    same_style = style[:, None] == style[None, :]
    same_item = item[:, None] == item[None, :]
    return {
        PAIR_KINDS[0]: upper & same_cls & ~same_style,
        PAIR_KINDS[1]: upper & same_item & ~same_style,
        PAIR_KINDS[2]: upper & ~same_cls & same_style,
        PAIR_KINDS[3]: upper & ~same_cls & ~same_style,
    }


def semantic_permutation_test(
    sim: Float[np.ndarray, "n n"],
    cls: Int[np.ndarray, " n"],
    style: Int[np.ndarray, " n"],
    n_permutations: int,
    seed: int,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """One-sided test of mean sim(same class, other style) - mean sim(other class, same style).

    Null: the samples' (class, style) labels are exchangeable, so both kinds of pairs are
    random pairs. Each permutation shuffles the label pairs over the samples; the observed
    labelling counts as one permutation, so the p-value is never 0.

    Raises:
        ValueError: no pair of one of the two kinds (one style only, or one class only).
    """
    cls, style = np.asarray(cls), np.asarray(style)

    def statistic(c: np.ndarray, s: np.ndarray) -> float:
        kinds = pair_kinds(c, s, np.arange(len(c)))
        return float(sim[kinds[SEMANTIC]].mean() - sim[kinds[APPEARANCE]].mean())

    kinds = pair_kinds(cls, style, np.arange(len(cls)))
    empty = [kind for kind in (SEMANTIC, APPEARANCE) if not kinds[kind].any()]
    if empty:
        raise ValueError(
            f"no {' and no '.join(repr(k) for k in empty)} pairs: semantics against "
            "appearance needs at least two styles that share a class, and two classes in a style"
        )
    observed = statistic(cls, style)
    rng = np.random.default_rng(seed)
    null = []
    for _ in tqdm(
        range(n_permutations), desc="permutation test", leave=False, disable=not progress
    ):
        order = rng.permutation(len(cls))
        null.append(statistic(cls[order], style[order]))
    null = np.asarray(null)
    return {
        "difference": observed,
        "null_mean": float(null.mean()),
        "null_std": float(null.std()),
        "p_value": float((1 + (null >= observed).sum()) / (1 + n_permutations)),
        "n_permutations": n_permutations,
    }
