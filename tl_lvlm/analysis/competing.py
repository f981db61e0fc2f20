"""Head rankings that head attribution is compared against.

- ``attention_final``: attention weight from the final token to the image tokens,
  per head (the pattern summed over image key positions).
- ``attention_text``: the same, averaged over every text query after the image
  (question, role and final tokens).
- ``single_head``: the effect of ablating one head at a time,
  ``y(all kept) - y(head h ablated)`` on the normalized logit.
- ``random``: a random order (:func:`attribution.random_ranking`).

Each score is higher for a head ranked as more important.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from attribution import collect
from tl_lvlm.inputs import LVLMInputs

#: Baseline rankings, in the order they are reported.
BASELINES = ("attention_final", "attention_text", "single_head", "random")
#: The baselines scored by :func:`attention_to_image`.
ATTENTION_BASELINES = ("attention_final", "attention_text")


@torch.no_grad()
def attention_to_image(
    model, inputs: LVLMInputs
) -> dict[str, Float[Tensor, "batch n_layers n_heads"]]:
    """Attention weight of text queries on the image tokens, per (layer, query head).

    For every row, ``pattern[head, query, key]`` of each decoder layer
    (``blocks.{l}.attn.hook_pattern``) is summed over the image key positions, then
    taken at the final query (``"attention_final"``) or averaged over the text
    queries after the image (``"attention_text"``). Reduced inside the hooks, so the
    full ``[pos, pos]`` patterns of all layers are never held at once.

    Args:
        model: a :class:`~tl_lvlm.HookedLVLM`.
        inputs: a batch from ``model.prepare``; left padding is ignored.

    Returns:
        ``{"attention_final": [batch, n_layers, n_heads], "attention_text": ...}`` on CPU.
    """
    image = inputs.group_mask("image").float()  # [batch, pos]
    final = inputs.group_mask("final").float()
    text = (inputs.group_mask("question") | inputs.group_mask("role")).float() + final
    queries = {"attention_final": final, "attention_text": text / text.sum(-1, keepdim=True)}
    scores = {
        name: torch.zeros(inputs.batch_size, model.n_layers, model.n_heads) for name in queries
    }

    def reduce(pattern: Float[Tensor, "batch head query key"], hook) -> None:
        layer = int(hook.name.split(".")[1])
        on_image = torch.einsum("bhqk,bk->bhq", pattern.float(), image)
        for name, weights in queries.items():
            scores[name][:, layer] = torch.einsum("bhq,bq->bh", on_image, weights).cpu()

    hooks = [(f"blocks.{layer}.attn.hook_pattern", reduce) for layer in range(model.n_layers)]
    model.run_with_hooks(inputs, fwd_hooks=hooks)
    return scores


def single_head_effects(
    fn: Callable[[np.ndarray], np.ndarray],
    n_components: int,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Float[np.ndarray, " n_components"]:
    """``fn(all kept) - fn(all kept but component j)`` for every component j.

    Args:
        fn: normalized output of bool masks ``[b, n_components]`` (True = kept),
            as for :func:`attribution.collect`.
        n_components: mask width (``n_layers * n_heads`` for heads).

    Returns:
        float64 ``[n_components]``; positive where ablating the component alone
        lowers the output.
    """
    # Row 0 keeps everything; row 1 + j ablates component j only.
    masks = np.ones((n_components + 1, n_components), dtype=bool)
    masks[np.arange(1, n_components + 1), np.arange(n_components)] = False
    y = collect(fn, masks, batch_size=batch_size, progress=progress, desc="single-head ablation")
    return y[0] - y[1:]
