"""Faithfulness and completeness of head rankings over samples, and the heads each needs.

Every sample has its own normalized-output function (1 = clean, 0 = all heads
ablated) and each ranking may differ per sample (e.g. ranked by that sample's own
attribution). The curves are measured by running the function on the masks of
:func:`attribution.faithfulness_curve` / :func:`attribution.completeness_curve`,
then averaged over samples; the heads needed are read off the averaged curves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from attribution import completeness_curve, components_needed, faithfulness_curve

#: Thresholds of "heads needed": faithfulness above, completeness below.
F_THRESHOLD = 0.8
C_THRESHOLD = 0.2


@dataclass
class Evaluation:
    """Per-sample faithfulness and completeness curves of several rankings.

    Attributes:
        ks: ``[n_points]`` numbers of top-ranked heads kept (faithfulness) or
            ablated (completeness).
        faithfulness: ranking name -> ``[n_samples, n_points]`` normalized outputs.
        completeness: ranking name -> ``[n_samples, n_points]`` normalized outputs.
    """

    ks: Int[np.ndarray, " n_points"]
    faithfulness: dict[str, Float[np.ndarray, "n_samples n_points"]]
    completeness: dict[str, Float[np.ndarray, "n_samples n_points"]]

    @property
    def rankings(self) -> list[str]:
        return list(self.faithfulness)

    def mean_faithfulness(self) -> dict[str, Float[np.ndarray, " n_points"]]:
        """Faithfulness curve of each ranking averaged over samples."""
        return {name: v.mean(axis=0) for name, v in self.faithfulness.items()}

    def mean_completeness(self) -> dict[str, Float[np.ndarray, " n_points"]]:
        """Completeness curve of each ranking averaged over samples."""
        return {name: v.mean(axis=0) for name, v in self.completeness.items()}

    @classmethod
    def concatenate(
        cls, parts: Sequence[Evaluation], ks: ArrayLike, rankings: Sequence[str]
    ) -> Evaluation:
        """Stack the samples of several evaluations (same ``ks`` and rankings) in order.

        ``ks`` and ``rankings`` give the shape of the result when ``parts`` is empty.
        """
        ks = np.asarray(ks, dtype=np.int64)
        for part in parts:
            if not np.array_equal(part.ks, ks) or part.rankings != list(rankings):
                raise ValueError("evaluations to concatenate must share ks and rankings")

        def stack(kind: str) -> dict[str, np.ndarray]:
            return {
                name: np.concatenate(
                    [getattr(p, kind)[name] for p in parts] or [np.zeros((0, len(ks)))]
                )
                for name in rankings
            }

        return cls(ks=ks, faithfulness=stack("faithfulness"), completeness=stack("completeness"))

    def heads_needed(
        self, f_threshold: float = F_THRESHOLD, c_threshold: float = C_THRESHOLD
    ) -> dict[str, int | None]:
        """Smallest k of the averaged curves with faithfulness > and completeness <
        the thresholds, per ranking (None where no k in ``ks`` meets both)."""
        f, c = self.mean_faithfulness(), self.mean_completeness()
        return {
            name: components_needed(self.ks, f[name], c[name], f_threshold, c_threshold)
            for name in self.rankings
        }


def evaluate_rankings(
    fns: Sequence[Callable[[np.ndarray], np.ndarray]],
    rankings: Mapping[str, ArrayLike],
    ks: ArrayLike,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Evaluation:
    """Faithfulness and completeness curves of each ranking on each sample.

    Args:
        fns: one normalized-output function per sample, taking bool masks
            ``[b, n_components]`` (True = kept), as for :func:`attribution.collect`.
        rankings: name -> component order, most important first: ``[n_components]``
            (one order for all samples) or ``[n_samples, n_components]`` (one per sample).
        ks: ``[n_points]`` values of k, e.g. :func:`attribution.default_ks`.
        batch_size: masks per function call.

    Raises:
        ValueError: a ranking that is neither ``[n_components]`` nor one row per sample.
    """
    ks = np.asarray(ks, dtype=np.int64)
    per_sample = {}
    for name, order in rankings.items():
        order = np.asarray(order)
        if order.ndim == 1:
            order = np.broadcast_to(order, (len(fns), len(order)))
        if order.ndim != 2 or len(order) != len(fns):
            raise ValueError(
                f"ranking {name!r} has shape {order.shape}; pass [n_components] for all "
                f"samples or [n_samples={len(fns)}, n_components], one order per sample"
            )
        per_sample[name] = order
    curves = {"faithfulness": faithfulness_curve, "completeness": completeness_curve}
    values = {kind: {name: [] for name in rankings} for kind in curves}
    for i, fn in enumerate(tqdm(fns, desc="evaluation", unit="sample", disable=not progress)):
        for name, order in per_sample.items():
            for kind, curve in curves.items():
                c = curve(fn, order[i], ks, batch_size=batch_size, progress=False)
                values[kind][name].append(c.values)
    return Evaluation(
        ks=ks,
        **{
            kind: {name: np.stack(v) if v else np.zeros((0, len(ks))) for name, v in d.items()}
            for kind, d in values.items()
        },
    )
