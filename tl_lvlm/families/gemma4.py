"""Gemma 4 (``Gemma4ForConditionalGeneration``): a patch-embedded vision encoder pooled 3 x 3,
Gemma 4 text.

TransformerLens 4.3 has an adapter for it (``Gemma4ArchitectureAdapter``). Its final norm is
a bare component without ``hook_scale``, which ``cache.apply_ln_to_stack`` and so
``cache.logit_attrs`` read; the bridge is booted with a subclass that maps it as an
``RMSNormalizationBridge`` instead (HF's own forward, ``hook_scale`` fired alongside; no
weight offset, as the adapter's config says), selected in the factory only during the
boot (:func:`~tl_lvlm.families.base.adapter_registered`), so TransformerLens is unchanged for
everyone else. Everything else in the adapter is used as it is.

Its attention bridge keeps the Hugging Face attention native (``maintain_native_attention``):
``hook_attn_scores`` and ``hook_pattern`` both fire HF's post-softmax weights and edits to
them are discarded, so the hook reference and knockout recompute attention
(``attention_edits = "recompute"``, :mod:`tl_lvlm.ablation.recomputed`).

Quirks:

- the image prompt is the image token ``<|image|>``, which the processor expands to
  ``<|image>`` + one ``<|image|>`` per pooled 3 x 3 block of patches + ``<image|>``;
- the image is resized, keeping its aspect, to at most ``max_soft_tokens * 9`` patches
  with sides multiple of ``3 * patch`` (no crop), so the image tokens are a
  ``h / 3 x w / 3`` grid over the whole image, row by row, and their number follows the
  image's size; ``pixel_values`` are per-image patches ``[batch, max_patches, 3 p^2]``
  with ``image_position_ids`` (-1 at padding), so rows select as they are;
- q, k and v are RMS-normalized per head before RoPE (v without a scale) and the
  attention scale is 1: the recomputation reads q, k, v at the norms' outputs
  (:meth:`Gemma4Family.query_hook`, ``key_hook``, ``value_hook``), the baselines read k
  and v there too;
- ``apply_rotary_pos_emb`` rotates one tensor (``(x, cos, sin)``), not ``(q, k)``;
- sliding-window and full-attention layers with their own RoPE (default on sliding
  layers, proportional partial RoPE on full ones): one ``(cos, sin)`` per layer type;
- the final logits are soft-capped (``final_logit_softcapping``, handled by the base class).

Checkpoint variants, by config (not by class, since one architecture covers them all):

- ``use_bidirectional_attention="vision"`` (the larger checkpoints): image tokens attend
  to each other both ways, in the sliding layers only (full layers stay causal). The
  engine's scope "text" runs (text queries are causal, the prefix is HF's own run with
  the image block's mask; its all-kept run reproduces the clean logit), but the
  recomputed-attention hook reference implements causal attention only and refuses, so
  the engine cannot be checked against it here: :attr:`Gemma4Family.bidirectional_image`
  says so and the reference names the reason.
- K/V shared across layers (``num_kv_shared_layers``, E2B / E4B): the last layers attend
  to the keys and values of the last earlier layer of their type and have no K/V of
  their own (:meth:`Gemma4Family.kv_source`). Ablating head ``(l, h)`` changes what query
  head ``h`` of layer ``l`` sees at the image positions and nothing else, as with grouped
  heads: the K/V tensors themselves are never replaced, so a layer reusing layer ``l``'s
  K/V still sees them clean unless its own heads are ablated. A KV-shared layer's
  baseline is the mean of the K/V it reads; the reference reads them at the source
  layer's hooks, the engine from the source layer's prefix cache.
- a full-attention head dim or KV-head count other than the sliding layers'
  (``global_head_dim``, ``num_global_key_value_heads``, the public checkpoints): image-K/V
  baselines and the engine's shared prefix are one tensor over layers, so the baselines,
  the ablation and the engine are refused with that reason
  (:meth:`Gemma4Family.shape_refusal`); knockout recomputes each layer's attention at its
  own shapes and runs.
- keys used as values (``attention_k_eq_v``, the full layers of the larger checkpoints):
  ``v_norm`` of the key projection, read at ``v_norm.hook_out`` like any value.
- Per-Layer Embeddings (``hidden_size_per_layer_input``, E2B / E4B) and ``layer_scalar``
  add to and scale the residual stream inside each block, outside every
  ``hook_attn_out`` / ``hook_mlp_out``, so TransformerLens's ``decompose_resid`` does not
  add up to the residual there (``tests/families/test_families_gemma4.py`` measures it);
  ablation and the engine are unaffected (the per-layer inputs of a text token depend on
  its own id and embedding only).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from tl_lvlm.families.base import adapter_registered
from tl_lvlm.families.gemma3 import Gemma3Family
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.families.processors import gemma4_processor_class, load_image_processor_only
from tl_lvlm.inputs import LVLMInputs


@functools.cache
def _adapter_with_final_norm_scale() -> type:
    """TransformerLens's Gemma 4 adapter with the final norm mapped as an RMS norm bridge."""
    from transformer_lens.model_bridge.generalized_components import RMSNormalizationBridge
    from transformer_lens.model_bridge.supported_architectures.gemma4 import (
        Gemma4ArchitectureAdapter,
    )

    class Gemma4AdapterWithFinalNormScale(Gemma4ArchitectureAdapter):
        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            # Runs HF's Gemma4RMSNorm (use_native_layernorm_autograd), firing hook_scale.
            self.component_mapping["ln_final"] = RMSNormalizationBridge(
                name="model.language_model.norm", config=self.cfg
            )

    return Gemma4AdapterWithFinalNormScale


class Gemma4Family(Gemma3Family):
    name = "Gemma 4"
    architecture = "Gemma4ForConditionalGeneration"
    image_prompt = "<|image|>"
    fixed_resolution = False
    sequence_inputs = ("mm_token_type_ids",)
    attention_edits = "recompute"  # the bridge keeps Gemma 4's attention native

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(gemma4_processor_class(), path)

    @classmethod
    def boot_bridge(cls, name: str, hf_model: torch.nn.Module, tokenizer):
        # The bridge selects its adapter by the HF class's name (see the base class).
        with adapter_registered(type(hf_model).__name__, _adapter_with_final_norm_scale()):
            return super().boot_bridge(name, hf_model, tokenizer)

    @classmethod
    def expand_image(cls, processor, n_image: int) -> str:
        # Gemma4Processor.replace_image_token: BOI, the soft tokens, EOI.
        return f"{processor.boi_token}{processor.image_token * n_image}{processor.eoi_token}"

    # ------------------------------------------------------------- model facts
    @property
    def bidirectional_image(self) -> bool:
        """Whether image tokens attend to each other both ways (in the sliding layers)."""
        return self.decoder_config.use_bidirectional_attention == "vision"

    @property
    def image_size(self) -> int:
        """Gemma 4 takes images of any size; this is the side of a square of 16 x 16 pooled
        patches (768 pixels on the public checkpoints; the processor shrinks it to its token
        budget), for where a default size is needed (random images)."""
        vision = self.config.vision_config
        return 16 * int(vision.pooling_kernel_size) * int(vision.patch_size)

    def kv_source(self, layer: int) -> int:
        """The layer whose keys and values ``layer`` attends to: itself, or for a KV-shared
        layer (``num_kv_shared_layers``) the last earlier layer of its type that computes
        its own, as HF's ``kv_sharing_modes`` store them."""
        cfg = self.decoder_config
        if cfg.kv_sharing_modes[layer] != "reuse":
            return layer
        first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
        kind = cfg.layer_types[layer]
        return max(i for i in range(first_shared) if cfg.layer_types[i] == kind)

    def shape_refusal(self) -> str | None:
        """Why image-K/V baselines and the engine refuse this checkpoint, or None: its layers'
        (head dim, KV heads) differ (``global_head_dim`` / ``num_global_key_value_heads`` on
        the public checkpoints), and a baseline or shared prefix is one tensor over layers."""
        cfg = self.decoder_config
        layers = [cfg.per_layer_config[i] for i in range(cfg.num_hidden_layers)]
        shapes = {i: (int(c.head_dim), int(c.num_key_value_heads)) for i, c in enumerate(layers)}
        if len(set(shapes.values())) == 1:
            return None
        return (
            f"its layers' (head dim, KV heads) differ ({shapes}), and image-K/V baselines and "
            "the engine's shared prefix are one tensor over layers"
        )

    def refusals(self) -> dict[str, str]:
        """Besides the base class's: image-K/V ablation (its baselines) and the engine where
        the layers' head shapes differ (:meth:`shape_refusal`); knockout still runs."""
        out = super().refusals()
        reason = self.shape_refusal()
        if reason:
            for analysis in ("ablation", "engine", "image_attribution"):
                out.setdefault(analysis, f"no image-K/V baseline for this checkpoint: {reason}")
        return out

    # ---------------------------------------------------------- key/value hooks
    def _baseline_hook(self, layer: int, name: str) -> tuple[str, int]:
        # After the norm, before RoPE: [batch, pos, n_kv_heads, d_head], of the layer that
        # computes the K/V this one reads.
        return f"blocks.{self.kv_source(layer)}.attn.{name}_norm.hook_out", 1

    def key_hook(self, layer: int) -> tuple[str, int]:
        return self._baseline_hook(layer, "k")

    def value_hook(self, layer: int) -> tuple[str, int]:
        return self._baseline_hook(layer, "v")

    def query_hook(self, layer: int) -> tuple[str, int]:
        """Queries after their norm, before RoPE (``[batch, pos, heads, d_head]``); keys and
        values (:meth:`key_hook`, :meth:`value_hook`) of a KV-shared layer are those of the
        layer it reuses (same layer type, so the same RoPE)."""
        return f"blocks.{layer}.attn.q_norm.hook_out", 1

    # ------------------------------------------------------------------ rotary
    def rotary_fn(self, layer: int) -> Callable:
        """``(q, k, cos, sin) -> (q, k)`` rotated by Gemma 4's one-tensor
        ``apply_rotary_pos_emb`` (``[batch, heads, pos, d_head]``, cos/sin ``[batch, pos, d]``)."""
        rotate = sys.modules[type(self.attention(layer)).__module__].apply_rotary_pos_emb

        def rotary(
            q: Float[Tensor, "batch n_heads n d_head"],
            k: Float[Tensor, "batch n_kv_heads n d_head"],
            cos: Float[Tensor, "batch n d_head"],
            sin: Float[Tensor, "batch n d_head"],
        ):
            return rotate(q, cos, sin), rotate(k, cos, sin)

        return rotary

    def rotate_keys(
        self,
        layer: int,
        k: Float[Tensor, "batch n_kv_heads n d_head"],
        cos: Float[Tensor, "batch n d_head"],
        sin: Float[Tensor, "batch n d_head"],
    ) -> Float[Tensor, "batch n_kv_heads n d_head"]:
        """Baseline keys rotated to ``layer``; refused when they do not have its shape (a
        zero baseline built for one head dim, on a checkpoint whose layers differ)."""
        attn = self.attention(layer)
        want = (attn.config.num_attention_heads // attn.num_key_value_groups, attn.head_dim)
        if (k.shape[1], k.shape[-1]) != want:
            raise NotImplementedError(
                f"{self.name}: baseline keys of (KV heads, head dim) "
                f"{(k.shape[1], k.shape[-1])} do not fit layer {layer}'s {want}: "
                f"{self.shape_refusal()}"
            )
        return super().rotate_keys(layer, k, cos, sin)

    # ---------------------------------------------------------- image geometry
    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The pooled patch grid of the resized image (aspect kept, not cropped)."""
        self.require("image_attribution")
        pool = int(self.config.vision_config.pooling_kernel_size)
        positions = sample.extra["image_position_ids"][0]  # [max_patches, (x, y)], -1 = pad
        real = positions[(positions >= 0).all(-1)]
        cols, rows = (int(real[:, axis].max()) + 1 for axis in (0, 1))
        geometry = PatchGeometry(rows // pool, cols // pool, "stretch")
        if geometry.n_tokens != sample.positions("image", 0).numel():
            raise ValueError(
                f"{self.name}: a {rows} x {cols} patch grid pooled {pool} x {pool} does not "
                f"give the {sample.positions('image', 0).numel()} image tokens of the prompt"
            )
        return geometry
