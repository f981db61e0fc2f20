"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): Qwen2.5-VL's predecessor, a ViT without
window attention (LayerNorm blocks, ``fc1``/``fc2`` MLP), the same 2 x 2 patch merger, and
a Qwen2 decoder with M-RoPE.

Everything tl-lvlm reads is Qwen2.5-VL's (:class:`~tl_lvlm.families.qwen2_5_vl.Qwen2_5_VLFamily`):
the image prompt and pad expansion, per-row ``pixel_values``, M-RoPE position ids from HF's
``get_rope_index`` (same signature and rule), the decoder at ``model.language_model`` with
native attention (so ``attention_edits = "recompute"``), the merged-patch geometry. What
differs:

- the processor is ``Qwen2VLProcessor``, built without its video processor where
  torchvision is missing (:func:`~tl_lvlm.families.processors.qwen2_vl_processor_class`);
- TransformerLens 4.3 has no Qwen2-VL adapter. Its Qwen2.5-VL adapter fits the decoder
  (the same module paths, q/k/v biases, native M-RoPE attention) and the merger; only
  the vision blocks' MLP differs (``fc1``/``fc2``, not gated), and the vision width is
  ``vision_config.embed_dim`` (Qwen2-VL's ``vision_config.hidden_size`` is the merger's
  output). :func:`qwen2_vl_adapter` is that adapter with those two changes, and is
  registered for ``Qwen2VLForConditionalGeneration`` only while the bridge boots (the
  factory's registry is restored afterwards, as for Qwen2.5-VL). Registering it for good
  at import would change TransformerLens for everyone who imports tl-lvlm, and an entry
  point would do the same; the context manager touches nothing outside our boot. It
  lists no required libraries: torchvision is never imported by it, the bridge or the
  model.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tl_lvlm.families.processors import load_image_processor_only, qwen2_vl_processor_class
from tl_lvlm.families.qwen2_5_vl import Qwen2_5_VLFamily, adapter_without_torchvision_check


@functools.cache
def qwen2_vl_adapter() -> type:
    """TransformerLens's Qwen2.5-VL adapter with Qwen2-VL's vision MLP and vision width."""
    from transformer_lens.model_bridge.generalized_components import LinearBridge
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.generalized_components.qwen3_5_vision_encoder import (
        Qwen3_5VisionBlockBridge,
        Qwen3_5VisionEncoderBridge,
    )

    class Qwen2VLArchitectureAdapter(adapter_without_torchvision_check()):
        """Qwen2.5-VL's mapping; the vision blocks' MLP is ``fc1 -> act -> fc2``."""

        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            self.cfg.vision_hidden_size = cfg.vision_config.embed_dim
            self.component_mapping["vision_encoder"] = Qwen3_5VisionEncoderBridge(
                name="model.visual",
                config=self.cfg,
                submodules={
                    "pos_embed": GeneralizedComponent(name="rotary_pos_emb"),
                    "blocks": Qwen3_5VisionBlockBridge(
                        name="blocks",
                        submodules={
                            "mlp": GeneralizedComponent(
                                name="mlp",
                                submodules={
                                    "in": LinearBridge(name="fc1"),
                                    "out": LinearBridge(name="fc2"),
                                },
                            ),
                        },
                    ),
                },
            )

    return Qwen2VLArchitectureAdapter


class Qwen2VLFamily(Qwen2_5_VLFamily):
    name = "Qwen2-VL"
    architecture = "Qwen2VLForConditionalGeneration"

    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(qwen2_vl_processor_class(), path)

    @classmethod
    def bridge_adapter(cls) -> type:
        """Ours (:func:`qwen2_vl_adapter`), with or without torchvision: TransformerLens has
        none for Qwen2-VL."""
        return qwen2_vl_adapter()
