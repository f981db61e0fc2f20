"""Unembedding directions with the final norm's weight folded in, as TransformerLens expects.

``HookedTransformer`` folds the final LayerNorm/RMSNorm weight into ``W_U`` by
default, so ``cache.logit_attrs(cache.decompose_resid(apply_ln=True), tokens)``
sums to the logit. A ``TransformerBridge`` does not fold (its own docstring warns
that ``tokens_to_residual_directions`` is then "misleading"): the attributions of
the bundled model miss the norm's weight and do not add up to the logit. This
module gives the folded directions; :class:`~tl_lvlm.HookedLVLM` uses them for
``tokens_to_residual_directions`` and hands itself to its caches, so
``cache.logit_attrs`` adds up. ``model.W_U`` itself stays the unfolded ``lm_head``
weight.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def folded_residual_directions(model, tokens) -> Float[Tensor, "... d_model"]:
    """``W_U[:, tokens]`` times the final norm's weight: directions in normalized space.

    Args:
        model: a :class:`~tl_lvlm.HookedLVLM`.
        tokens: as for ``TransformerBridge.tokens_to_residual_directions`` (a single
            token as str/int/scalar tensor, or a 1-D / 2-D tensor of token ids).

    Returns:
        ``[*tokens.shape, d_model]`` (``[d_model]`` for a single token). Dotted with a
        residual stack from ``cache.apply_ln_to_stack`` (or ``apply_ln=True``), gives
        that stack's contribution to the logit (exactly, for a final norm without a
        bias and an ``lm_head`` without one, as on every supported family).
    """
    ln = model.bridge.ln_final
    weight = ln.weight
    # The bridge's own convention for Gemma-style norms (scale by 1 + weight).
    if ln.uses_weight_offset:
        weight = 1.0 + weight
    return model.bridge.tokens_to_residual_directions(tokens) * weight
