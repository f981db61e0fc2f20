"""Tiny Mistral 3: a Pixtral vision tower (2-D RoPE, any resolution), a patch merger, a Mistral
decoder, rows of ``[IMG]`` tokens separated by ``[IMG_BREAK]``."""

from __future__ import annotations

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
    vision_config,
)

#: The tiny Mistral 3's vision patch side, merge size and longest image edge: the processor
#: scales an image down to a longest edge of 32 pixels (keeping its aspect) and up to whole
#: 4 * 2 = 8-pixel blocks, each one image token (a 28 x 28 image -> 32 x 32 -> 4 rows of 4
#: tokens; 16 x 40 -> 12 x 32 -> 16 x 32 -> 2 rows of 4).
MISTRAL3_PATCH, MISTRAL3_MERGE, MISTRAL3_LONGEST = 4, 2, 32
MISTRAL3_SPECIALS = [
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
]
_SYSTEM = "You are a helpful assistant."
# mistralai/Mistral-Small-3.1-24B-Instruct-2503's chat template (its default system prompt
# shortened, without the date it fills in).
_MISTRAL3_CHAT = (
    "{%- set default_system_message = '" + _SYSTEM + "' %}{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = default_system_message %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)


def build_tiny_mistral3(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Mistral3ForConditionalGeneration`` (Pixtral tower + Mistral) and its
    ``PixtralProcessor`` with the PIL image processor (``PixtralImageProcessorPil``).

    The processor is transformers' own class, imported without torchvision where it is
    missing (:func:`tl_lvlm.families.processors.pixtral_processor_class`).
    """
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessorPil,
        PixtralVisionConfig,
    )

    from tl_lvlm.families.processors import pixtral_processor_class

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=MISTRAL3_SPECIALS,
        named={"image_token": "[IMG]"},
        corpus=[f"[SYSTEM_PROMPT]{_SYSTEM}[/SYSTEM_PROMPT][INST][IMG][/INST]"],
    )
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": MISTRAL3_LONGEST},
        patch_size={"height": MISTRAL3_PATCH, "width": MISTRAL3_PATCH},
    )
    processor = pixtral_processor_class()(
        image_processor,
        tokenizer,
        patch_size=MISTRAL3_PATCH,
        spatial_merge_size=MISTRAL3_MERGE,
        chat_template=_MISTRAL3_CHAT,
    )
    vision = vision_config(
        PixtralVisionConfig,
        cfg,
        MISTRAL3_LONGEST,
        MISTRAL3_PATCH,
        head_dim=cfg.vision_d_model // cfg.vision_heads,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Mistral3Config(
        vision_config=vision,
        text_config=text_config(MistralConfig, cfg, tokenizer, sliding_window=None),
        image_token_index=ids("[IMG]"),
        spatial_merge_size=MISTRAL3_MERGE,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
        architectures=["Mistral3ForConditionalGeneration"],
    )
    return finish(Mistral3ForConditionalGeneration, config, cfg, tokenizer), processor
