"""Faithfulness and completeness of a ranking, measured by calling ``fn`` on masks.

With outputs normalized so that the clean run gives 1 and the all-ablated run 0:
faithfulness(k) is the output with only the top-k components kept, and completeness(k)
the output with only the top-k components ablated. A good ranking reaches high
faithfulness and low completeness with few components.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from attribution.collect import collect
from attribution.own_checks import checks_own_arguments


@dataclass
class Curve:
    """Outputs of ``fn`` as a function of k.

    Attributes:
        ks: ``[n_points]`` numbers of top-ranked components kept (faithfulness) or
            ablated (completeness).
        values: ``[n_points]`` (or ``[n_points, k]`` for multi-output ``fn``) outputs.
    """

    ks: np.ndarray
    values: np.ndarray


@checks_own_arguments
def default_ks(
    n_components: int,
    n_points: int = 50,
    spacing: Literal["geometric", "linear"] = "geometric",
) -> np.ndarray:
    """At most ``n_points`` increasing values of k in ``[0, n_components]``, including both ends.

    ``"geometric"`` spacing is dense at small k, where the number of components needed
    is decided; ``"linear"`` spaces them evenly. Every k is used when
    ``n_components + 1 <= n_points``.
    """
    if n_components <= 0:
        raise ValueError(f"n_components must be positive, got {n_components}")
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    if n_components + 1 <= n_points:
        return np.arange(n_components + 1)
    if spacing == "geometric":
        grid = np.concatenate([[0.0], np.geomspace(1, n_components, n_points - 1)])
    elif spacing == "linear":
        grid = np.linspace(0, n_components, n_points)
    else:
        raise ValueError(f"spacing must be 'geometric' or 'linear', got {spacing!r}")
    return np.unique(np.round(grid).astype(np.int64))


def faithfulness_curve(
    fn: Callable[[np.ndarray], Any],
    ranking: ArrayLike,
    ks: ArrayLike | None = None,
    *,
    n_components: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Curve:
    """Outputs of ``fn`` with only the top-k ranked components kept (all others ablated).

    Args:
        fn: as for :func:`attribution.collect`; bool masks ``[b, n_components]``, True = kept.
        ranking: component indices, most important first; may list only the top of the
            order when ``n_components`` is given.
        ks: values of k, each in ``[0, len(ranking)]``; default :func:`default_ks`.
        n_components: mask width; default ``len(ranking)``.
        batch_size: masks per ``fn`` call.
    """
    return _curve(fn, ranking, ks, n_components, batch_size, progress, keep_top=True)


def completeness_curve(
    fn: Callable[[np.ndarray], Any],
    ranking: ArrayLike,
    ks: ArrayLike | None = None,
    *,
    n_components: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Curve:
    """Outputs of ``fn`` with only the top-k ranked components ablated (all others kept).

    Arguments as for :func:`faithfulness_curve`.
    """
    return _curve(fn, ranking, ks, n_components, batch_size, progress, keep_top=False)


def _curve(fn, ranking, ks, n_components, batch_size, progress, *, keep_top: bool) -> Curve:
    ranking = np.asarray(ranking)
    if ranking.ndim != 1 or len(ranking) == 0 or not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError("ranking must be a non-empty 1-D array of component indices")
    n = len(ranking) if n_components is None else n_components
    if len(np.unique(ranking)) != len(ranking) or ranking.min() < 0 or ranking.max() >= n:
        raise ValueError(f"ranking must hold distinct component indices in [0, {n})")
    ks = default_ks(len(ranking)) if ks is None else np.asarray(ks)
    if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError("ks must be a non-empty 1-D array of integers")
    if ks.min() < 0 or ks.max() > len(ranking):
        raise ValueError(f"ks must lie in [0, {len(ranking)}] (the ranking's length)")

    # rank_of[j] = position of component j in the ranking; unranked components come last.
    rank_of = np.full(n, len(ranking))
    rank_of[ranking] = np.arange(len(ranking))
    in_top = rank_of[None, :] < ks[:, None]  # [n_points, n_components]
    masks = in_top if keep_top else ~in_top
    desc = "faithfulness" if keep_top else "completeness"
    values = collect(fn, masks, batch_size=batch_size, progress=progress, desc=desc)
    return Curve(ks=ks.astype(np.int64), values=values)


def components_needed(
    ks: ArrayLike,
    faithfulness: ArrayLike,
    completeness: ArrayLike,
    f_threshold: float = 0.8,
    c_threshold: float = 0.2,
) -> int | None:
    """Smallest k with faithfulness > ``f_threshold`` and completeness < ``c_threshold``.

    Args:
        ks, faithfulness, completeness: ``[n_points]`` each, e.g. ``Curve.ks`` and the
            ``Curve.values`` of the two curves computed on the same ks.

    Returns:
        That k, or None when no k in ``ks`` meets both thresholds.
    """
    ks, f, c = (np.asarray(a) for a in (ks, faithfulness, completeness))
    if not (ks.ndim == f.ndim == c.ndim == 1 and len(ks) == len(f) == len(c)):
        raise ValueError(
            f"ks, faithfulness and completeness must be 1-D of equal length, "
            f"got shapes {ks.shape}, {f.shape}, {c.shape}"
        )
    ok = (f > f_threshold) & (c < c_threshold)
    return int(ks[ok].min()) if ok.any() else None
