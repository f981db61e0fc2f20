"""Tiny Qwen3.5: a hybrid decoder (one Gated DeltaNet linear-attention layer, one gated
softmax layer), Qwen3-VL's vision tower, ChatML."""

from __future__ import annotations

from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.testing.qwen2_5_vl import (
    build_tiny_qwen_vl,
    qwen_vision_kwargs,
)

#: The tiny Qwen3.5's decoder layer types: layer 0 is linear attention.
QWEN3_5_LAYER_TYPES = ["linear_attention", "full_attention"]


def build_tiny_qwen3_5(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen3_5ForConditionalGeneration`` and its ``Qwen3VLProcessor`` (PIL image
    processor, no video processor).

    The decoder's layers are :data:`QWEN3_5_LAYER_TYPES`; both kinds are gated as on the
    public checkpoints, the softmax layer with q/k norms and partial M-RoPE.
    """
    from transformers import (
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5TextConfig,
        Qwen3_5VisionConfig,
    )

    from tl_lvlm.families.processors import qwen3_vl_processor

    cfg = cfg or TinyFamilyConfig(seed=1)
    if cfg.n_layers != len(QWEN3_5_LAYER_TYPES):
        raise ValueError(f"the tiny Qwen3.5 has {len(QWEN3_5_LAYER_TYPES)} layers")
    d_head = cfg.d_model // cfg.n_heads
    vision = Qwen3_5VisionConfig(
        **qwen_vision_kwargs(cfg),
        num_position_embeddings=64,  # an 8 x 8 grid, interpolated to each image's
    )

    def text_config_cls(**kwargs):
        # Half of each head rotates (the checkpoints: a quarter of 256), in 3 M-RoPE sections.
        rope = {**kwargs.pop("rope_parameters"), "partial_rotary_factor": 0.5}
        rope["mrope_section"] = [d_head // 8, d_head // 16, d_head // 16]
        return Qwen3_5TextConfig(
            **kwargs,
            rope_parameters=rope,
            head_dim=d_head,
            layer_types=QWEN3_5_LAYER_TYPES,
            linear_key_head_dim=d_head,
            linear_value_head_dim=d_head,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        )

    return build_tiny_qwen_vl(
        cfg,
        model_cls=Qwen3_5ForConditionalGeneration,
        config_cls=Qwen3_5Config,
        text_config_cls=text_config_cls,
        vision_config=vision,
        processor_fn=qwen3_vl_processor,
    )
