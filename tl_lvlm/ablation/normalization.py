"""The normalized target logit of ablation attributions: 1 = clean, 0 = all ablated.

Head attribution and image-token attribution regress the same quantity,

    y = (logit(mask) - logit(all ablated)) / (logit(clean) - logit(all ablated)),

and both leave out samples whose clean and all-ablated logits are too close for the
division to mean anything (it multiplies logit noise by ``1 / gap``). "logit" is the run's
metric (:mod:`tl_lvlm.ablation.metric`; the target logit by default): the clean, ablated
and masked values are all of that one metric, and the gap is in its units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float
from torch import Tensor


@dataclass(frozen=True)
class LogitNormalization:
    """The clean and all-ablated target logits of one sample, and ``y`` from them.

    Attributes:
        clean: target logit with every component kept.
        ablated: target logit with every component ablated.
    """

    clean: float
    ablated: float

    @classmethod
    def measure(
        cls,
        clean: float,
        logits: Callable[[Bool[np.ndarray, "1 n_components"]], Float[np.ndarray, " 1"]],
        n_components: int,
    ) -> LogitNormalization:
        """Run ``logits`` on the all-ablated mask (``[1, n_components]``, all False)."""
        ablated = float(logits(np.zeros((1, n_components), dtype=bool))[0])
        return cls(float(clean), ablated)

    @property
    def gap(self) -> float:
        """``clean - ablated``: how much ablating everything lowers the target logit."""
        return self.clean - self.ablated

    def too_small(self, min_gap: float) -> bool:
        """True when ``gap < min_gap``, ``gap == 0`` or NaN: ``y`` would divide by (almost)
        nothing (a gap of exactly 0, e.g. a metric the image cannot move, is refused even
        with ``min_gap <= 0``)."""
        return not self.gap >= min_gap or self.gap == 0

    def __call__(
        self, logits: Float[np.ndarray, "*b"] | Float[Tensor, "*b"] | Sequence[float]
    ) -> Float[np.ndarray, "*b"]:
        """``y`` of raw target logits (an array, a tensor or a list of floats)."""
        return (np.asarray(logits, dtype=np.float64) - self.ablated) / self.gap
