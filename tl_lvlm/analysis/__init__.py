"""Analyses on the ablation layer: head attribution, image-token attribution, rankings.

- ``heads``: :func:`head_attribution` (the paper's method) and its result, config, store.
- ``image_tokens``: :func:`image_token_attribution`, the same regression over image
  positions, and object-vs-background mass.
- ``competing``: the rankings head attribution is compared against (attention to the
  image, single-head effects, random).
- ``evaluation``: faithfulness / completeness curves and heads needed per ranking.
"""

from tl_lvlm.analysis.heads import HeadAttributionResult, answer_token_id, head_attribution
from tl_lvlm.analysis.image_tokens import ImageAttribution, image_token_attribution, object_mass

__all__ = [
    "HeadAttributionResult",
    "ImageAttribution",
    "answer_token_id",
    "head_attribution",
    "image_token_attribution",
    "object_mass",
]
