"""ElasticNet regression from masks to outputs: the coefficients are the attributions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.linear_model import ElasticNet

from attribution.masks import as_masks


@dataclass
class FitResult:
    """A linear model ``y ≈ masks @ coef + intercept`` and its held-out quality.

    Sign convention: masks are 1 = kept, 0 = ablated, so a positive ``coef[j]`` means
    that keeping component j raises the output (ablating it lowers it).

    Attributes:
        coef: ``[n_components]`` attribution of each component.
        intercept: predicted output with every component ablated.
        r2: coefficient of determination on the held-out masks (NaN without a holdout,
            or when the held-out outputs are constant).
        pearson: Pearson correlation between held-out predictions and outputs (NaN
            without a holdout, or when either side is constant).
        n_train: masks used to fit.
        n_test: held-out masks.
        y_test: ``[n_test]`` held-out outputs, for scatter plots.
        y_pred: ``[n_test]`` predictions for the held-out masks.
    """

    coef: np.ndarray
    intercept: float
    r2: float
    pearson: float
    n_train: int
    n_test: int
    y_test: np.ndarray
    y_pred: np.ndarray

    def predict(self, masks: ArrayLike) -> np.ndarray:
        """Predicted outputs ``[n_masks]`` for masks ``[n_masks, n_components]``."""
        masks = as_masks(masks)
        if masks.shape[1] != len(self.coef):
            raise ValueError(f"masks have {masks.shape[1]} components, the fit {len(self.coef)}")
        return masks.astype(np.float64) @ self.coef + self.intercept


def fit(
    masks: ArrayLike,
    y: ArrayLike,
    *,
    alpha: float = 0.0005,
    l1_ratio: float = 0.5,
    holdout: float = 0.1,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> FitResult:
    """Fit ``sklearn.linear_model.ElasticNet`` from masks (as float 1 = kept, 0 = ablated) to y.

    A random ``holdout`` fraction of the masks (chosen with ``seed``) is left out of the
    fit and used for ``r2`` and ``pearson``. ``alpha``, ``l1_ratio``, ``max_iter`` and
    ``tol`` are passed to ElasticNet (the first two default to the paper's values, the
    last two to sklearn's).

    Args:
        masks: ``[n_masks, n_components]`` bool or 0/1.
        y: ``[n_masks]`` outputs, e.g. from :func:`attribution.collect`.

    Raises:
        ValueError: on shape mismatches, NaN/inf in ``y``, fewer than
            ``n_components + 1`` masks, or a ``holdout`` outside [0, 1) or too small to
            leave 2 held-out masks.
    """
    masks = as_masks(masks)
    y = np.asarray(y, dtype=np.float64)
    n_masks, n_components = masks.shape
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-D [n_masks], got shape {y.shape}; fit each column separately"
        )
    if len(y) != n_masks:
        raise ValueError(f"masks has {n_masks} rows but y has {len(y)}")
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))
        raise ValueError(f"y has {len(bad)} NaN/inf values, first at rows {bad[:5].tolist()}")
    if n_masks < n_components + 1:
        raise ValueError(
            f"fit needs at least n_components + 1 = {n_components + 1} masks, got {n_masks}"
        )
    if not (0.0 <= holdout < 1.0):
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")

    order = np.random.default_rng(seed).permutation(n_masks)
    n_test = int(round(holdout * n_masks))
    if holdout > 0 and n_test < 2:
        raise ValueError(
            f"holdout={holdout} of {n_masks} masks leaves {n_test} held-out masks; "
            "R2 and Pearson need at least 2 (raise holdout, or use holdout=0 to skip them)"
        )
    if n_test >= n_masks:
        raise ValueError(f"holdout={holdout} of {n_masks} masks leaves no masks to fit on")
    test, train = order[:n_test], order[n_test:]
    x = masks.astype(np.float64)
    model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, max_iter=max_iter, tol=tol)
    model.fit(x[train], y[train])

    y_test = y[test]
    y_pred = model.predict(x[test]) if n_test else np.empty(0)
    return FitResult(
        coef=model.coef_.copy(),
        intercept=float(model.intercept_),
        r2=_r2(y_test, y_pred),
        pearson=_pearson(y_test, y_pred),
        n_train=len(train),
        n_test=n_test,
        y_test=y_test,
        y_pred=y_pred,
    )


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    # Undefined for constant targets; NaN instead of sklearn's forced 0/1 keeps it honest.
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class Aggregate:
    """Attributions averaged over samples (one :class:`FitResult` per sample).

    Attributes:
        coef: ``[n_components]`` mean coefficient over results.
        coef_std: ``[n_components]`` standard deviation (ddof=0) over results.
        r2_mean, r2_std: mean and standard deviation of the held-out R2.
        pearson_mean, pearson_std: same for the held-out Pearson correlation.
        n_results: number of results averaged.
    """

    coef: np.ndarray
    coef_std: np.ndarray
    r2_mean: float
    r2_std: float
    pearson_mean: float
    pearson_std: float
    n_results: int


def aggregate(results: Sequence[FitResult]) -> Aggregate:
    """Average the coefficients of per-sample fits; NaN metrics propagate to the means."""
    if not results:
        raise ValueError("aggregate needs at least one FitResult")
    sizes = {len(r.coef) for r in results}
    if len(sizes) > 1:
        raise ValueError(f"results have different numbers of components: {sorted(sizes)}")
    coefs = np.stack([r.coef for r in results])
    r2 = np.array([r.r2 for r in results])
    pearson = np.array([r.pearson for r in results])
    return Aggregate(
        coef=coefs.mean(axis=0),
        coef_std=coefs.std(axis=0),
        r2_mean=float(r2.mean()),
        r2_std=float(r2.std()),
        pearson_mean=float(pearson.mean()),
        pearson_std=float(pearson.std()),
        n_results=len(results),
    )
