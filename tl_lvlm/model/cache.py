"""The ActivationCache of a HookedLVLM: ``decompose_resid`` with the family's extra residual
inputs.

TransformerLens's ``decompose_resid`` lists the embeddings and every block's attention
and MLP outputs. Some LVLMs add more to the residual stream between blocks: Qwen3-VL's
DeepStack adds vision features at the image positions after its first decoder layers.
Left out, the components would not add up to the residual at those positions. A family
names such inputs as hook points (:meth:`~tl_lvlm.families.LVLMFamily.residual_inputs`);
:class:`LVLMActivationCache` puts each in the decomposition after the block it follows,
labelled ``{layer}_{hook name after "hook_"}`` (``0_deepstack``). Families without any
get exactly TransformerLens's decomposition.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities.slice import Slice


class LVLMActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache`` whose ``decompose_resid`` includes the family's
    extra residual inputs (module docstring); ``self.model`` is the :class:`HookedLVLM`."""

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Slice | int | tuple | list | None = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> (
        Float[Tensor, "n_components *batch_and_pos d_model"]
        | tuple[Float[Tensor, "n_components *batch_and_pos d_model"], list[str]]
    ):
        """As ``ActivationCache.decompose_resid``, plus the family's residual inputs of the
        blocks before ``layer`` (``[n_components, batch, pos, d_model]``).

        They are inputs from outside the decoder, like the embeddings: listed in mode
        ``"all"`` with ``incl_embeds`` (the components then add up to the residual
        stream), left out otherwise.
        """
        components, labels = super().decompose_resid(
            layer, mlp_input, mode, False, pos_slice, incl_embeds, return_labels=True
        )
        layer = self.model.cfg.n_layers if layer is None or layer == -1 else layer
        if mode == "all" and incl_embeds:
            pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
            last = "attn_out" if self.model.cfg.attn_only else "mlp_out"
            parts, names = [], []
            for part, label in zip(components, labels, strict=True):
                parts.append(part)
                names.append(label)
                block, _, kind = label.partition("_")
                # After a block's last component; "{layer}_attn_out" (mlp_input) is not one.
                if kind == last and int(block) < layer:
                    for name in self.model.family.residual_inputs(int(block)):
                        parts.append(pos_slice.apply(self[name], dim=-2))
                        names.append(f"{block}_{name.rsplit('hook_', 1)[-1]}")
            components, labels = torch.stack(parts), names
        if apply_ln:
            components = self.apply_ln_to_stack(
                components, layer, pos_slice=pos_slice, mlp_input=mlp_input
            )
        return (components, labels) if return_labels else components


def lvlm_cache(cache, model) -> LVLMActivationCache | dict:
    """``cache`` from the bridge's ``run_with_cache`` as an :class:`LVLMActivationCache` of
    ``model``, which it asks for ``tokens_to_residual_directions`` (``logit_attrs``) and the
    family's residual inputs; a plain dict (``return_cache_object=False``) is returned as is.
    """
    if not isinstance(cache, ActivationCache):
        return cache
    return LVLMActivationCache(cache.cache_dict, model, has_batch_dim=cache.has_batch_dim)
