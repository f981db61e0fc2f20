"""Tiny Idefics3: SigLIP-style tiles plus a global image, pixel shuffle, a Llama decoder."""

from __future__ import annotations

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
    vision_config,
)

#: The tiny Idefics3's tile side (the vision tower's input), patch size and pixel-shuffle
#: factor: a 16 x 16 tile is 4 x 4 patches, shuffled into 2 x 2 = 4 image tokens. Images
#: are resized to a longest edge of :data:`IDEFICS3_LONGEST` = 2 tiles, then split into
#: up to 2 x 2 tiles followed by the global image (a 28 x 28 image: 2 x 2 tiles + global
#: = 20 image tokens; 16 x 40: 1 x 2 tiles + global = 12).
IDEFICS3_TILE, IDEFICS3_PATCH, IDEFICS3_SCALE = 16, 4, 2
IDEFICS3_LONGEST = 2 * IDEFICS3_TILE
#: The processor's marker tokens: around each tile, before the global image, per tile.
IDEFICS3_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]
# HuggingFaceM4/Idefics3-8B-Llama3's chat template, with the tiny tokenizer's BOS for
# Llama 3's <|begin_of_text|>.
_IDEFICS3_CHAT = (
    "<s>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_idefics3(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Idefics3ForConditionalGeneration`` (SigLIP-style tower + Llama) and its
    ``Idefics3Processor`` with the PIL image processor (``Idefics3ImageProcessorPil``).

    Image splitting is on, as on the public checkpoints: each image is a grid of tiles,
    each ``<fake_token_around_image><row_r_col_c>`` and 4 ``<image>`` tokens, a newline
    after each row of tiles, then ``\\n<fake_token_around_image><global-img>``, the global
    image's 4 tokens and a closing ``<fake_token_around_image>``.
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    return tiny_idefics3_like(
        cfg or TinyFamilyConfig(),
        config_classes=(Idefics3Config, Idefics3VisionConfig),
        model_class=Idefics3ForConditionalGeneration,
        image_processor_class=Idefics3ImageProcessorPil,
        processor_class=Idefics3Processor,
        chat_template=_IDEFICS3_CHAT,
        bos=True,
    )


def tiny_idefics3_like(
    cfg: TinyFamilyConfig,
    *,
    config_classes: tuple[type, type],
    model_class: type,
    image_processor_class: type,
    processor_class,
    chat_template: str,
    bos: bool,
    specials: tuple[str, ...] = (),
):
    """A tiny model of the Idefics3 layout (Idefics3 and SmolVLM): ``config_classes`` are the
    model's and its vision tower's config classes, ``processor_class`` is called as
    ``(image_processor, tokenizer, image_seq_len=..., chat_template=...)``; ``specials``
    are the tokenizer's special tokens besides the processor's markers."""
    from transformers import LlamaConfig

    config_class, vision_config_class = config_classes
    tokenizer = family_tokenizer(
        cfg,
        specials=[*IDEFICS3_SPECIALS, *specials],
        bos=bos,
        corpus=["User:<image><end_of_utterance>\nAssistant:", "\n\n"],
    )
    image_processor = image_processor_class(
        size={"longest_edge": IDEFICS3_LONGEST},
        max_image_size={"longest_edge": IDEFICS3_TILE},
    )
    processor = processor_class(
        image_processor,
        tokenizer,
        image_seq_len=(IDEFICS3_TILE // IDEFICS3_PATCH // IDEFICS3_SCALE) ** 2,
        chat_template=chat_template,
    )
    config = config_class(
        vision_config=vision_config(vision_config_class, cfg, IDEFICS3_TILE, IDEFICS3_PATCH),
        text_config=text_config(LlamaConfig, cfg, tokenizer),
        scale_factor=IDEFICS3_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        architectures=[model_class.__name__],
    )
    return finish(model_class, config, cfg, tokenizer), processor
