"""``n_masks="auto"``: collect masks in rounds and stop a sample once its fit has converged.

The rounds are prefixes of the one mask sequence a fixed-``n_masks`` run of the same
seed draws (:func:`attribution.sample_masks` with :data:`AUTO_MAX_MASKS` rows), so an
auto run is reproducible, resumes from its store like any run, and its masks are the
first ``n_masks_used`` masks of a 10,000-mask run.

Criterion. Round r fits ElasticNet on the first ``n_r`` masks (:func:`auto_rounds`:
``n_r = r * step`` with ``step = max(1000, 2 * (n_heads_total + 1))`` rounded up to a
multiple of 100, capped at :data:`AUTO_MAX_MASKS`). A sample has converged at round r
when, between rounds r - 1 and r,

- the held-out R² changed by at most :data:`AUTO_R2_TOL`, and
- the set of its :data:`AUTO_TOP_K` highest-ranked heads is the same.

It then uses ``n_r`` masks; a sample that never converges uses all :data:`AUTO_MAX_MASKS`.
"""

from __future__ import annotations

import math

from attribution import FitResult, rank_by

#: Most masks a sample of an ``n_masks="auto"`` run uses (the paper's fixed count).
AUTO_MAX_MASKS = 10_000
#: Largest change of held-out R² between two rounds that counts as converged.
AUTO_R2_TOL = 0.01
#: Size of the top-head set that must be the same in two rounds.
AUTO_TOP_K = 10


def auto_rounds(n_components: int, max_masks: int = AUTO_MAX_MASKS) -> list[int]:
    """Mask counts of the rounds: multiples of one step, the last one ``max_masks``."""
    step = max(1000, 100 * math.ceil(2 * (n_components + 1) / 100))
    return [min(n, max_masks) for n in range(step, max_masks + step, step) if n - step < max_masks]


def converged(previous: FitResult, current: FitResult) -> bool:
    """The criterion of the module doc, between two consecutive rounds' fits."""
    k = min(AUTO_TOP_K, len(current.coef))

    def top(f: FitResult) -> set[int]:
        return set(rank_by(f.coef)[:k].tolist())

    return abs(current.r2 - previous.r2) <= AUTO_R2_TOL and top(previous) == top(current)
