"""Tiny SmolVLM: the Idefics3 layout (tiles plus a global image, pixel shuffle) with SmolVLM's
classes, processor and chat template."""

from __future__ import annotations

from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.testing.idefics3 import tiny_idefics3_like

# HuggingFaceTB/SmolVLM-Instruct's chat template (SmolLM2's tokenizer adds no BOS; the
# template opens with <|im_start|>).
_SMOLVLM_CHAT = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_smolvlm(cfg: TinyFamilyConfig | None = None):
    """A tiny ``SmolVLMForConditionalGeneration`` and its ``SmolVLMProcessor`` (PIL image
    processor, no video processor: :func:`tl_lvlm.families.processors.smolvlm_processor`),
    with the tiles of :func:`~tl_lvlm.testing.build_tiny_idefics3`."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMVisionConfig,
    )

    from tl_lvlm.families.processors import smolvlm_processor

    return tiny_idefics3_like(
        cfg or TinyFamilyConfig(),
        config_classes=(SmolVLMConfig, SmolVLMVisionConfig),
        model_class=SmolVLMForConditionalGeneration,
        image_processor_class=SmolVLMImageProcessorPil,
        processor_class=smolvlm_processor,
        chat_template=_SMOLVLM_CHAT,
        bos=False,
        specials=("<|im_start|>",),
    )
