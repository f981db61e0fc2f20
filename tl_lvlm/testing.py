"""Test fixtures: the tiny-model kit of :mod:`tl_lvlm.tiny_llava` plus test-only constants.

Production code never imports this module; tests, benchmarks and examples may.
"""

from tl_lvlm.templates import LLAVA_15_TEMPLATE
from tl_lvlm.tiny_llava import (
    DIGIT_WORDS,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TinyLlavaConfig,
    build_processor,
    build_tiny_llava,
    build_tokenizer,
    random_images,
    save_atomic,
    save_tiny_llava,
    scale_init,
)

#: Two questions of different lengths, so a batch of them needs padding.
TEST_QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

__all__ = [
    "DIGIT_WORDS",
    "IMAGE_TOKEN",
    "LLAVA_15_TEMPLATE",
    "SPECIAL_TOKENS",
    "TEST_QUESTIONS",
    "TinyLlavaConfig",
    "build_processor",
    "build_tiny_llava",
    "build_tokenizer",
    "random_images",
    "save_atomic",
    "save_tiny_llava",
    "scale_init",
]
