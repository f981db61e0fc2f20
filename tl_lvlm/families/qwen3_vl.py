"""Qwen3-VL (``Qwen3VLForConditionalGeneration``) and Qwen3-VL-MoE
(``Qwen3VLMoeForConditionalGeneration``): Qwen2.5-VL's merged-patch input with a
DeepStack vision tower and a Qwen3 decoder (q/k norms, interleaved M-RoPE).

What is Qwen2.5-VL's (:class:`~tl_lvlm.families.qwen2_5_vl.Qwen2_5_VLFamily`, subclassed):
the image prompt and its expansion, per-row pixel packing, the merged-patch grid over the
resized image, 3-D position ids from HF's ``get_rope_index`` (the text after the image
resumes at ``start + max(rows, cols)``; the engine cuts the same ids for its suffix), a
bridge that keeps the text attention native (the hook reference and knockout recompute
attention), a processor without its video processor when torchvision is missing.

Quirks of its own:

- **Interleaved M-RoPE.** The rotary frequencies are dealt out to the temporal, height
  and width position ids in turn (``t h w t h w ...``) instead of in three blocks; the
  position ids are the same 3-D ids as Qwen2.5-VL's. Keys are rotated by the decoder's own
  rotary embedding and ``apply_rotary_pos_emb``, so the interleaving is the model's.
- **q/k norms.** Each head's query and key are RMS-normalised (``q_norm`` / ``k_norm``)
  before RoPE. The ablation replaces the keys *after* ``k_norm`` and before RoPE
  (``blocks.{l}.attn.k_norm.hook_out``): that is what RoPE rotates and attention reads, so
  a baseline of the sample's own keys reproduces the clean run, and the mean baseline is
  the mean key as attention sees it. Replacing the raw projections instead would put the
  mean through ``k_norm`` again: the norm of a mean is not the mean of norms, so the
  "mean" key would be one no image produces. The recomputed attention reads the
  normalised queries (``q_norm.hook_out``) for the same reason.
- **DeepStack.** The vision tower's intermediate features (one merger per level in
  ``deepstack_visual_indexes``) are added to the hidden states at the image positions
  after decoder layers ``0 .. levels - 1``, by a tensor add inside HF's layer loop, not a
  module. Here that add goes through a hook point, ``blocks.{l}.hook_deepstack``
  (``[batch, pos, d_model]``, zero outside the image), fired at the end of block ``l``:
  ``blocks.{l}.hook_resid_post`` includes it, so it equals ``blocks.{l+1}.hook_resid_pre``
  (with TransformerLens's adapter alone the add falls between the two).
  :meth:`residual_inputs` names it, so ``cache.decompose_resid`` has a ``{l}_deepstack``
  component and adds up at image positions; an edit of the hook point is what the next
  layer reads.
- **Adapter.** TransformerLens 4.3 has adapters for both architectures
  (``Qwen3VLArchitectureAdapter``, ``Qwen3VLMoeArchitectureAdapter``); as for Qwen2.5-VL,
  without torchvision the bridge is booted with a subclass that drops only the listed
  torchvision requirement, registered with the factory during the boot and restored
  after it.
- **MoE.** Qwen3-VL-MoE's experts replace the dense MLP only; attention, DeepStack,
  positions and the processor are Qwen3-VL's, so the family is a subclass with its
  architecture name. The MoE block's output is ``hook_mlp_out``, so the decomposition
  holds as for the dense model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_lvlm.families.base import _unwrapped
from tl_lvlm.families.processors import load_image_processor_only, qwen3_vl_processor_class
from tl_lvlm.families.qwen2_5_vl import Qwen2_5_VLFamily


class _DeepStack:
    """DeepStack's injection through hook points ``blocks.{l}.hook_deepstack``.

    A pre-hook on the decoder takes the ``visual_pos_masks`` and
    ``deepstack_visual_embeds`` HF hands it (and hands it none, so HF adds nothing
    itself); a forward hook on each of the first ``levels`` HF decoder layers adds that
    level's features at the image positions of the layer's output, as HF's
    ``_deepstack_process`` does, through the level's hook point (zero elsewhere, so the
    sum is bit for bit HF's). The hooks sit on the HF layers, not the bridge's blocks,
    so they also run where the bridge's wrappers are taken out (the engine's prefix).
    """

    def __init__(self, decoder: torch.nn.Module, hook_points: list):
        self.hook_points = hook_points
        self.mask: Bool[Tensor, "batch pos"] | None = None
        self.embeds: list[Float[Tensor, "n_visual d_model"]] | None = None
        decoder.register_forward_pre_hook(self.take, with_kwargs=True)
        for layer, point in enumerate(hook_points):
            _unwrapped(decoder.layers[layer]).register_forward_hook(self.adder(layer, point))

    def take(self, module, args, kwargs):
        self.mask = kwargs.get("visual_pos_masks")
        self.embeds = kwargs.get("deepstack_visual_embeds")
        if self.embeds is not None and len(self.embeds) != len(self.hook_points):
            raise ValueError(
                f"the vision tower gave {len(self.embeds)} DeepStack levels but the decoder "
                f"has hook points for {len(self.hook_points)}"
            )
        return args, {**kwargs, "deepstack_visual_embeds": None}

    def adder(self, layer: int, point):
        def add(module, args, output: Tensor) -> Tensor | None:
            if self.embeds is None:
                return None  # a text-only run (a generation step after the prompt)
            mask = self.mask.to(output.device)
            full = output.new_zeros(output.shape)
            full[mask] = self.embeds[layer].to(output.device, output.dtype)
            return output + point(full)

        return add


class Qwen3VLFamily(Qwen2_5_VLFamily):
    name = "Qwen3-VL"
    architecture = "Qwen3VLForConditionalGeneration"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(qwen3_vl_processor_class(), path)

    @classmethod
    def boot_bridge(cls, name: str, hf_model: torch.nn.Module, tokenizer):
        from transformer_lens.hook_points import HookPoint

        bridge = super().boot_bridge(name, hf_model, tokenizer)
        levels = len(hf_model.config.vision_config.deepstack_visual_indexes)
        points = []
        for layer in range(levels):
            point = HookPoint().eval()  # the bridge is in eval mode; patching checks it
            point.name = f"blocks.{layer}.hook_deepstack"
            bridge.blocks[layer].add_module("hook_deepstack", point)
            bridge._hook_registry[point.name] = point
            points.append(point)
        _DeepStack(hf_model.model.language_model, points)
        return bridge

    # ------------------------------------------------------------- model facts
    def residual_inputs(self, layer: int) -> list[str]:
        """DeepStack's hook point after ``layer``, for the first ``levels`` layers."""
        levels = len(self.config.vision_config.deepstack_visual_indexes)
        return [f"blocks.{layer}.hook_deepstack"] if layer < levels else []

    # ---------------------------------------------------------- query/key hooks
    def query_hook(self, layer: int) -> tuple[str, int]:
        # q_norm runs on [batch, pos, heads, d_head], before the transpose.
        return f"blocks.{layer}.attn.q_norm.hook_out", 1

    def key_hook(self, layer: int) -> tuple[str, int]:
        return f"blocks.{layer}.attn.k_norm.hook_out", 1


class Qwen3VLMoeFamily(Qwen3VLFamily):
    name = "Qwen3-VL-MoE"
    architecture = "Qwen3VLMoeForConditionalGeneration"
