"""Tiny Qwen3-VL and Qwen3-VL-MoE: merged-patch vision tower with DeepStack mergers, an
interleaved M-RoPE decoder with q/k norms, ChatML."""

from __future__ import annotations

from tl_lvlm.testing._tiny import TinyFamilyConfig, finish, text_config
from tl_lvlm.testing.qwen2_5_vl import (
    QWEN_VL_CHAT,
    qwen_image_processor,
    qwen_tokenizer,
    qwen_vision_kwargs,
)

#: The tiny Qwen3-VL's vision blocks whose features DeepStack adds to the residual stream
#: after decoder layers 0 and 1 (of 3), so that the injection reaches the decomposition of
#: the final residual from more than one layer, as on the public checkpoints (3 levels).
QWEN3_DEEPSTACK = [0, 1]

# Qwen3-VL-Instruct's chat template, one turn of images then text: no default system turn
# (unlike Qwen2.5-VL's), vision markers around the image pad.
_QWEN3_VL_CHAT = QWEN_VL_CHAT.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}",
    "",
)


def _processor(cfg: TinyFamilyConfig):
    from tl_lvlm.families.processors import qwen3_vl_processor

    tokenizer = qwen_tokenizer(
        cfg,
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n",
    )
    return tokenizer, qwen3_vl_processor(qwen_image_processor(), tokenizer, _QWEN3_VL_CHAT)


def _config(config_cls, text_cls, vision_cls, cfg: TinyFamilyConfig, tokenizer, **text_kwargs):
    d_head = cfg.d_model // cfg.n_heads
    # Interleaved M-RoPE: the d_head / 2 frequencies are dealt out t, h, w, t, h, w, ...;
    # mrope_section counts each axis's share (the first axis takes the rest).
    mrope = [d_head // 2 - 2 * (d_head // 6), d_head // 6, d_head // 6]
    text = text_config(
        text_cls,
        cfg,
        tokenizer,
        head_dim=d_head,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope,
            "mrope_interleaved": True,
        },
        **text_kwargs,
    )
    vision = vision_cls(
        **qwen_vision_kwargs(cfg),
        num_position_embeddings=64,
        deepstack_visual_indexes=QWEN3_DEEPSTACK,
    )
    ids = tokenizer.convert_tokens_to_ids
    return config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        architectures=[config_cls.__name__.replace("Config", "ForConditionalGeneration")],
    )


def build_tiny_qwen3_vl(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen3VLForConditionalGeneration`` and its ``Qwen3VLProcessor``.

    The processor is the real one with the PIL image processor and no video processor
    (:func:`tl_lvlm.families.processors.qwen3_vl_processor`); it saves as a
    ``Qwen3VLProcessor``, as the public checkpoints do. Three decoder layers with q/k
    norms and interleaved M-RoPE; DeepStack injects the features of both vision blocks
    after decoder layers 0 and 1.
    """
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLTextConfig,
        Qwen3VLVisionConfig,
    )

    cfg = cfg or TinyFamilyConfig(n_layers=3, seed=1)
    tokenizer, processor = _processor(cfg)
    config = _config(Qwen3VLConfig, Qwen3VLTextConfig, Qwen3VLVisionConfig, cfg, tokenizer)
    return finish(Qwen3VLForConditionalGeneration, config, cfg, tokenizer), processor


def build_tiny_qwen3_vl_moe(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen3VLMoeForConditionalGeneration`` and its ``Qwen3VLProcessor``: the tiny
    Qwen3-VL with a sparse MoE MLP (4 experts, 2 per token) in every decoder layer."""
    from transformers import (
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        Qwen3VLMoeTextConfig,
        Qwen3VLMoeVisionConfig,
    )

    cfg = cfg or TinyFamilyConfig(n_layers=3, seed=1)
    tokenizer, processor = _processor(cfg)
    config = _config(
        Qwen3VLMoeConfig,
        Qwen3VLMoeTextConfig,
        Qwen3VLMoeVisionConfig,
        cfg,
        tokenizer,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=cfg.d_mlp // 2,
        decoder_sparse_step=1,
    )
    return finish(Qwen3VLMoeForConditionalGeneration, config, cfg, tokenizer), processor
