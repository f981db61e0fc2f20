"""Image-K/V head ablation: baselines, the hook reference, recomputed attention, the engine.

- ``baseline``: :class:`ImageKVBaseline` (:class:`GeometryMeanBaseline` per image size),
  :func:`image_kv_baseline` and the one baseline
  policy, :func:`resolve_baseline`.
- ``scope``: which queries see an ablated head's baseline (``"text"`` / ``"all"``).
- ``hooks``: the readable hook reference (:func:`image_kv_ablation_hooks`).
- ``recomputed``: the reference by recomputed attention, for families whose bridge keeps
  attention native (``LVLMFamily.attention_edits == "recompute"``).
- ``engine``: :class:`AblationEngine`, the same ablation for thousands of masks, fast.
- ``normalization``: the normalized logit ``y`` of head attribution.
- ``metric``: what is measured of the final-position logits (:class:`Metric`, ``metric=``).
"""

from tl_lvlm.ablation.baseline import (
    BASELINE_KINDS,
    MIN_MEAN_IMAGES,
    REFERENCE_HINT,
    GeometryMeanBaseline,
    ImageKVBaseline,
    image_kv_baseline,
    key_hook,
    resolve_baseline,
    unpadded_image_span,
)
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.hooks import (
    check_keep,
    image_kv_ablation,
    image_kv_ablation_hooks,
    score_edit_hooks,
)
from tl_lvlm.ablation.metric import METRICS, Metric
from tl_lvlm.ablation.normalization import LogitNormalization
from tl_lvlm.ablation.scope import SCOPES, Scope, ablated_queries, check_scope

__all__ = [
    "BASELINE_KINDS",
    "METRICS",
    "MIN_MEAN_IMAGES",
    "REFERENCE_HINT",
    "SCOPES",
    "AblationEngine",
    "GeometryMeanBaseline",
    "ImageKVBaseline",
    "LogitNormalization",
    "Metric",
    "Scope",
    "ablated_queries",
    "check_keep",
    "check_scope",
    "image_kv_ablation",
    "image_kv_ablation_hooks",
    "image_kv_baseline",
    "key_hook",
    "resolve_baseline",
    "score_edit_hooks",
    "unpadded_image_span",
]
