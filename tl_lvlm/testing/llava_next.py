"""Tiny LLaVA-NeXT: tiled CLIP images (anyres), Mistral [INST] chat."""

from __future__ import annotations

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
    vision_config,
)

_MISTRAL_INST_CHAT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ ' ' + c['text'] }}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
)


#: Tile side of the tiny LLaVA-NeXT (the CLIP tower's input) and its patch size:
#: 16 features per tile; high-resolution grids of up to 2 x 2 tiles.
NEXT_TILE, NEXT_PATCH = 28, 7
NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def build_tiny_llava_next(cfg: TinyFamilyConfig | None = None):
    """A tiny ``LlavaNextForConditionalGeneration`` (CLIP + Llama) and ``LlavaNextProcessor``.

    Dynamic tiling is real: the image is split into tiles on one of
    :data:`NEXT_PINPOINTS`, so the number of image tokens depends on its size.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(cfg, specials=[], corpus=["[INST] [/INST]"])
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": NEXT_TILE},
        crop_size={"height": NEXT_TILE, "width": NEXT_TILE},
        image_grid_pinpoints=NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=NEXT_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_MISTRAL_INST_CHAT,
    )
    config = LlavaNextConfig(
        vision_config=vision_config(CLIPVisionConfig, cfg, NEXT_TILE, NEXT_PATCH),
        text_config=text_config(LlamaConfig, cfg, tokenizer),
        image_token_id=tokenizer.image_token_id,
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        architectures=["LlavaNextForConditionalGeneration"],
    )
    return finish(LlavaNextForConditionalGeneration, config, cfg, tokenizer), processor
