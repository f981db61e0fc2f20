"""Tiny LLaVA-OneVision: SigLIP base image and anyres tiles, Qwen2 decoder."""

from __future__ import annotations

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
    vision_config,
)

#: The tiny OneVision's SigLIP input side and patch size (4 x 4 = 16 tokens for the
#: base image and per tile), and its anyres grids of up to 2 x 2 tiles.
OV_TILE, OV_PATCH = 28, 7
OV_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
# llava-onevision-qwen2-*-ov-hf's chat template: images first, then "\n" + text.
_ONEVISION_CHAT = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llava_onevision(cfg: TinyFamilyConfig | None = None):
    """A tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP + Qwen2) and its processor.

    The processor is the real ``LlavaOnevisionProcessor`` with the PIL image processor
    and no video processor (:func:`tl_lvlm.families.processors.llava_onevision_processor`).
    Anyres tiling is real: a base image plus tiles on one of :data:`OV_PINPOINTS`,
    unpadded, with a newline token after each row of tile features.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from tl_lvlm.families.processors import llava_onevision_processor

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        named={"video_token": "<video>"},
        bos=False,
        corpus=["<|im_start|>user <image>\n<|im_end|><|im_start|>assistant\n"],
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": OV_TILE, "width": OV_TILE}, image_grid_pinpoints=OV_PINPOINTS
    )
    processor = llava_onevision_processor(
        image_processor,
        tokenizer,
        _ONEVISION_CHAT,
        num_image_tokens=(OV_TILE // OV_PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_config(SiglipVisionConfig, cfg, OV_TILE, OV_PATCH),
        text_config=text_config(Qwen2Config, cfg, tokenizer),
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=OV_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        architectures=["LlavaOnevisionForConditionalGeneration"],
    )
    return finish(LlavaOnevisionForConditionalGeneration, config, cfg, tokenizer), processor
