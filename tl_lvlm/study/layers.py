"""Where the important heads sit: the layer distribution of a head attribution map."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float

from attribution import rank_by


def layer_distribution(
    mean: Float[np.ndarray, "n_layers n_heads"],
    per_sample: Float[np.ndarray, "n_samples n_layers n_heads"] | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Layers of the top-``k`` heads and the share of positive attribution per layer.

    "Second half" is layers ``n_layers // 2`` and up. A head's attribution mass is its
    coefficient; only the top-k heads and positive coefficients count, since a negative
    coefficient is a head whose image reading lowers the answer. Shares whose total is not
    positive are NaN (nothing to divide).

    Args:
        mean: ``[n_layers, n_heads]`` attribution averaged over samples.
        per_sample: ``[n_samples, n_layers, n_heads]`` each sample's attribution, for the
            per-sample counts (left out when None).
        k: heads counted as top.

    Returns:
        JSON-ready numbers: ``top_k_count_per_layer``, ``top_k_count_second_half``,
        ``top_k_mass_share_second_half``, ``positive_mass_share_per_layer``,
        ``positive_mass_share_second_half``, ``positive_mass_mean_depth`` (0 = first layer,
        1 = last), and with ``per_sample`` the per-sample means.
    """
    mean = np.asarray(mean, dtype=np.float64)
    n_layers, n_heads = mean.shape
    if not 1 <= k <= mean.size:
        raise ValueError(f"k must be in [1, {mean.size}] (the heads of the map), got {k}")
    late = np.arange(n_layers) >= n_layers // 2

    def top_layers(coef: np.ndarray) -> np.ndarray:
        return rank_by(coef.ravel())[:k] // n_heads

    top = top_layers(mean)
    top_coef = mean.ravel()[rank_by(mean.ravel())[:k]]
    positive = np.clip(mean, 0, None).sum(1)
    total = positive.sum()
    out: dict[str, Any] = {
        "k": k,
        "second_half_layers": np.flatnonzero(late).tolist(),
        "top_k_count_per_layer": np.bincount(top, minlength=n_layers).tolist(),
        "top_k_mass_per_layer": np.bincount(top, weights=top_coef, minlength=n_layers).tolist(),
        "top_k_mass_share_second_half": _share(top_coef[late[top]].sum(), top_coef.sum()),
        "top_k_count_second_half": int(late[top].sum()),
        "positive_mass_share_per_layer": [_share(p, total) for p in positive],
        "positive_mass_share_second_half": _share(positive[late].sum(), total),
        "positive_mass_mean_depth": _share(
            (np.arange(n_layers) * positive).sum(), total * max(n_layers - 1, 1)
        ),
    }
    if per_sample is not None and len(per_sample):
        counts = np.stack(
            [np.bincount(top_layers(np.asarray(c)), minlength=n_layers) for c in per_sample]
        )
        out["per_sample_top_k_count_per_layer_mean"] = counts.mean(0).tolist()
        out["per_sample_top_k_share_second_half_mean"] = float(counts[:, late].sum(1).mean() / k)
    return out


def _share(part: float, total: float) -> float:
    return float(part / total) if total > 0 else float("nan")
