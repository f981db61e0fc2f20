"""Prompt templates: a format string with one ``<image>`` and one ``{question}``."""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"
QUESTION_PLACEHOLDER = "{question}"

#: LLaVA-1.5's conversation format.
LLAVA_15_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"

#: LLaVA-1.5 with the Vicuna system prompt in front.
VICUNA_SYSTEM_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "USER: <image>\n{question} ASSISTANT:"
)

#: ChatML, as used by LLaVA-NeXT / OneVision checkpoints with Qwen or Yi towers.
CHATML_TEMPLATE = "<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n"


def split_template(template: str) -> tuple[str, str, str]:
    """Split ``template`` into (before image, between image and question, after question).

    Raises ``ValueError`` unless the template has exactly one ``<image>`` followed
    by exactly one ``{question}``.
    """
    n_img = template.count(IMAGE_PLACEHOLDER)
    if n_img != 1:
        raise ValueError(
            f"template must contain exactly one {IMAGE_PLACEHOLDER!r} placeholder, found {n_img} "
            f"in {template!r}; e.g. {LLAVA_15_TEMPLATE!r}"
        )
    before, rest = template.split(IMAGE_PLACEHOLDER)
    if rest.count(QUESTION_PLACEHOLDER) != 1:
        raise ValueError(
            f"template must contain exactly one {QUESTION_PLACEHOLDER!r} after the image "
            f"placeholder, got {template!r}; e.g. {LLAVA_15_TEMPLATE!r}"
        )
    between, after = rest.split(QUESTION_PLACEHOLDER)
    return before, between, after
