"""Random ablation masks over components (heads, tokens, ...): True = kept."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike

from attribution.own_checks import checks_own_arguments


@checks_own_arguments
def sample_masks(
    n_masks: int, n_components: int, p_ablate: float = 0.75, seed: int = 0
) -> np.ndarray:
    """Draw independent Bernoulli ablation masks.

    Each component is ablated (False) with probability ``p_ablate`` and kept (True)
    otherwise, independently per mask and component.

    Returns:
        bool array ``[n_masks, n_components]``; True = component kept. The same
        arguments always give the same array (numpy ``default_rng(seed)``).
    """
    for name, value in (("n_masks", n_masks), ("n_components", n_components)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # Written as a negated range check so that NaN is rejected too.
    if not (0.0 < p_ablate < 1.0):
        raise ValueError(f"p_ablate must be in (0, 1), got {p_ablate!r}")
    rng = np.random.default_rng(seed)
    return rng.random((n_masks, n_components)) >= p_ablate


def as_masks(masks: ArrayLike) -> np.ndarray:
    """Validate ``masks`` as a 2-D mask matrix and return it as bool ``[n_masks, n_components]``.

    Accepts bool arrays or numeric arrays holding only 0 and 1 (1 = kept).
    """
    arr = np.asarray(masks)
    if arr.ndim != 2:
        raise ValueError(f"masks must be 2-D [n_masks, n_components], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("masks must be boolean or contain only 0 and 1 (1 = kept)")
    return arr.astype(np.bool_)
