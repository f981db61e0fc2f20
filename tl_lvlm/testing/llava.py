"""Tiny LLaVA-1.5 in the families' shared shapes (the zoo's builder, grouped-query attention)."""

from __future__ import annotations

from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.zoo.tiny_llava import build_tiny_llava


def build_tiny_llava_15(cfg: TinyFamilyConfig | None = None):
    """:func:`tl_lvlm.testing.build_tiny_llava` with the shared shapes (28 x 28 CLIP input,
    16 image tokens, grouped-query attention)."""
    return build_tiny_llava(cfg or TinyFamilyConfig())
