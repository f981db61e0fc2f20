"""Tiny Qwen2-VL: Qwen2.5-VL's tiny model (:mod:`tl_lvlm.testing.qwen2_5_vl`) with Qwen2-VL's
vision tower (no windows, LayerNorm blocks, ``fc1``/``fc2`` MLP)."""

from __future__ import annotations

from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.testing.qwen2_5_vl import QWEN_MERGE, QWEN_PATCH, build_tiny_qwen_vl


def build_tiny_qwen2_vl(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen2VLForConditionalGeneration`` and its ``Qwen2VLProcessor``.

    The processor is the real one with the PIL image processor and no video processor
    (:func:`tl_lvlm.families.processors.qwen2_vl_processor`); it saves as a
    ``Qwen2VLProcessor``, as the public checkpoints do. The vision tower has two blocks of
    global attention; the decoder uses M-RoPE.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    from tl_lvlm.families.processors import qwen2_vl_processor

    cfg = cfg or TinyFamilyConfig(seed=1)
    vision = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=cfg.vision_d_model,
        # Qwen2-VL's vision hidden_size is the merger's output: the decoder's width.
        hidden_size=cfg.d_model,
        mlp_ratio=2,
        num_heads=cfg.vision_heads,
        patch_size=QWEN_PATCH,
        spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )
    return build_tiny_qwen_vl(
        cfg,
        model_cls=Qwen2VLForConditionalGeneration,
        config_cls=Qwen2VLConfig,
        text_config_cls=Qwen2VLTextConfig,
        vision_config=vision,
        processor_fn=qwen2_vl_processor,
    )
