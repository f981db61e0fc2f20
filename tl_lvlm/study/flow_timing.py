"""When a knockout hurts, and how much of the image's effect a knockout keeps.

Read off :func:`~tl_lvlm.flow.flow_sweep` results of the paper's experiments
(:data:`~tl_lvlm.flow.PAPER_EDGE_SETS`): the question's route to the answer
(:data:`TEXT_ROUTE` knocked out) against the image's (:data:`IMAGE_ROUTE`), and the image's
share of the effect, ``(knocked - no image) / (clean - no image)``, where "no image"
(:data:`NO_IMAGE`) blocks every text token from the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from tl_lvlm.flow import FlowSweep

#: The edge set of ``text_flow`` that blocks the question from the role and final tokens.
TEXT_ROUTE = "question -> role, final"
#: The edge set of ``image_flow`` that blocks the role and final tokens from the image.
IMAGE_ROUTE = "image read by question only"
#: The edge set of ``image_flow`` that blocks the question tokens from the image.
ROLE_FINAL_ROUTE = "image read by role, final only"
#: The edge set of ``image_flow`` that blocks the image from every text token.
NO_IMAGE = "image read by no text"
#: Drop of the relative logit that counts as an effect in :func:`flow_timing`.
EFFECT_THRESHOLD = 0.1
#: Least logit change of removing the image for :func:`image_share` (as head attribution's
#: ``min_logit_gap``): below it the share divides by (almost) nothing.
MIN_IMAGE_GAP = 0.5


def flow_timing(
    curve: Float[np.ndarray, " n_windows"], starts: Sequence[int], window: int
) -> dict[str, Any]:
    """When a knockout hurts: the layers where it lowers the relative logit.

    ``effect = max(0, 1 - curve)`` per window; returns the effect-weighted mean of the
    windows' centre layers (None when no window has an effect), the first / last window
    start whose effect is at least :data:`EFFECT_THRESHOLD` (None if none is) and the
    largest effect.
    """
    effect = np.clip(1.0 - np.asarray(curve, dtype=np.float64), 0.0, None)
    centres = np.asarray(starts, dtype=np.float64) + (window - 1) / 2
    above = [int(s) for s, e in zip(starts, effect, strict=True) if e >= EFFECT_THRESHOLD]
    return {
        "weighted_mean_layer": float((centres * effect).sum() / effect.sum())
        if effect.sum() > 0
        else None,
        "first_layer_above": above[0] if above else None,
        "last_layer_above": above[-1] if above else None,
        "max_effect": float(effect.max()),
    }


def timing_summary(
    text_curve: Float[np.ndarray, " n_windows"],
    image_curve: Float[np.ndarray, " n_windows"],
    starts: Sequence[int],
    window: int,
) -> dict[str, Any]:
    """:func:`flow_timing` of the question's and the image's route, and which comes first.

    ``text_before_image`` is None when either route has no effect at all.
    """
    out = {
        "question_to_role_final": flow_timing(text_curve, starts, window),
        "image_to_role_final": flow_timing(image_curve, starts, window),
    }
    text, image = (out[k]["weighted_mean_layer"] for k in out)
    out["text_before_image"] = None if text is None or image is None else bool(text < image)
    return out


def image_share(
    sweep: FlowSweep, no_image: Float[np.ndarray, " n_samples"]
) -> dict[str, Float[np.ndarray, "n_windows n"]]:
    """``[n_windows, n]`` ``(knocked - no image) / (clean - no image)`` per edge set.

    ``no_image``: every sample's target logit with the image blocked from every text token in
    every layer. Over the kept samples whose image moves the logit by at least
    :data:`MIN_IMAGE_GAP`.
    """
    kept = sweep.kept[sweep.clean[sweep.kept] - no_image[sweep.kept] >= MIN_IMAGE_GAP]
    clean, floor = sweep.clean[kept], no_image[kept]
    return {name: (ko[:, kept] - floor) / (clean - floor) for name, ko in sweep.knocked.items()}
