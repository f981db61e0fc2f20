"""Shared by tests/model: the bundled model's name and question, and independent HF copies.

Every model is compared with an independent Hugging Face copy loaded from the same
checkpoint: the bridge swaps the wrapped model's attention modules in place, so the
wrapped ``hf_model`` is no reference. (A module of its own, not ``conftest``: test
modules importing ``conftest`` by name would get another directory's.)
"""

from __future__ import annotations

import torch
import transformers

from tl_lvlm.zoo import DIGITS_QUESTION as DIGIT_QUESTION

DIGITS = "tl-lvlm/tiny-digits"

__all__ = ["DIGITS", "DIGIT_QUESTION", "hf_copy"]


def hf_copy(path) -> torch.nn.Module:
    """An independent Hugging Face model loaded from ``path`` (eager attention, eval)."""
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(path, attn_implementation="eager").eval()
