"""Tiny Qwen2.5-VL: merged-patch vision tower, M-RoPE decoder, ChatML (shared with Qwen2-VL)."""

from __future__ import annotations

from collections.abc import Callable

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
)

#: The tiny Qwen2.5-VL's vision patch side and merge size: the processor resizes an
#: image (keeping its aspect) to multiples of 4 * 2 = 8 pixels, and each 2 x 2 block of
#: 4-pixel patches becomes one image token (a 28 x 28 image -> 32 x 32 -> 4 x 4 tokens).
QWEN_PATCH, QWEN_MERGE = 4, 2
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
QWEN_IMAGE_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
# Qwen2-VL-Instruct's and Qwen2.5-VL-Instruct's chat template (system turn by default,
# vision markers around the image pad).
QWEN_VL_CHAT = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] + '<|im_end|>\n' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen_vision_kwargs(cfg: TinyFamilyConfig) -> dict:
    """The vision-config settings the tiny Qwen-VL towers share (two blocks, the
    :data:`QWEN_PATCH` / :data:`QWEN_MERGE` geometry, output width ``d_model``)."""
    return dict(
        depth=2,
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_heads=cfg.vision_heads,
        patch_size=QWEN_PATCH,
        spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        out_hidden_size=cfg.d_model,
    )


def qwen_tokenizer(cfg: TinyFamilyConfig, prompt: str):
    """The Qwen-VLs' tiny tokenizer: ChatML and vision markers as special tokens, no BOS,
    merges learned on ``prompt`` (the family's rendered chat template)."""
    return family_tokenizer(
        cfg,
        specials=[*QWEN_SPECIALS, *QWEN_IMAGE_TOKENS.values()],
        named=QWEN_IMAGE_TOKENS,
        bos=False,
        corpus=[prompt],
    )


def qwen_image_processor():
    """The Qwen-VLs' PIL image processor at :data:`QWEN_PATCH` / :data:`QWEN_MERGE`."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH,
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        min_pixels=(QWEN_PATCH * QWEN_MERGE) ** 2 * 4,
        max_pixels=64 * 64,
    )


def build_tiny_qwen_vl(
    cfg: TinyFamilyConfig,
    *,
    model_cls: type,
    config_cls: type,
    text_config_cls: Callable,  # a config class, or a function making one
    vision_config,
    processor_fn,
):
    """A tiny Qwen-VL model and processor: what Qwen2-VL and Qwen2.5-VL share (ChatML
    tokenizer and template, the PIL image processor with :data:`QWEN_PATCH` /
    :data:`QWEN_MERGE`, an M-RoPE decoder); ``vision_config`` is the family's vision
    config, ``processor_fn(image_processor, tokenizer, chat_template)`` its processor."""
    tokenizer = qwen_tokenizer(
        cfg,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n",
    )
    image_processor = qwen_image_processor()
    processor = processor_fn(image_processor, tokenizer, QWEN_VL_CHAT)
    d_head = cfg.d_model // cfg.n_heads
    # M-RoPE splits the d_head / 2 rotary frequencies into (temporal, height, width).
    mrope = [d_head // 2 - 2 * (d_head // 6), d_head // 6, d_head // 6]
    text = text_config(
        text_config_cls,
        cfg,
        tokenizer,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    ids = tokenizer.convert_tokens_to_ids
    config = config_cls(
        text_config=text,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        architectures=[model_cls.__name__],
    )
    return finish(model_cls, config, cfg, tokenizer), processor


def build_tiny_qwen2_5_vl(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` and its ``Qwen2_5_VLProcessor``.

    The processor is the real one with the PIL image processor and no video processor
    (:func:`tl_lvlm.families.processors.qwen2_5_vl_processor`); it saves as a
    ``Qwen2_5_VLProcessor``, as the public checkpoints do. The vision tower has two
    blocks, one with window attention and one global; the decoder uses M-RoPE.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    from tl_lvlm.families.processors import qwen2_5_vl_processor

    # Seed 1: a random model whose answers to the test images rise with the image heads
    # (clean above all-ablated), so head attribution keeps samples to fit.
    cfg = cfg or TinyFamilyConfig(seed=1)
    vision = Qwen2_5_VLVisionConfig(
        **qwen_vision_kwargs(cfg),
        # Windows of 2 x 2 merged tokens in block 0; block 1 attends globally.
        window_size=2 * QWEN_PATCH * QWEN_MERGE,
        fullatt_block_indexes=[1],
    )
    return build_tiny_qwen_vl(
        cfg,
        model_cls=Qwen2_5_VLForConditionalGeneration,
        config_cls=Qwen2_5_VLConfig,
        text_config_cls=Qwen2_5_VLTextConfig,
        vision_config=vision,
        processor_fn=qwen2_5_vl_processor,
    )
