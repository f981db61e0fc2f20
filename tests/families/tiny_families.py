"""Tiny checkpoints of the non-LLaVA-1.5 families, saved in HF format and loaded back.

Every family's model is loaded through ``HookedLVLM.from_pretrained(path)``, the
path a user takes with a hub name; each checkpoint is built once per test run.

A helper module rather than a ``conftest.py``: test modules import from
``conftest`` by name, and a second one here would shadow ``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tl_lvlm import HookedLVLM
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.testing import BUILDERS, save_tiny_family

#: Families with a tiny builder: every supported family (the contract test checks it).
FAMILIES = tuple(BUILDERS)

# Removed when the interpreter exits.
_ROOT = tempfile.TemporaryDirectory(prefix="tl-lvlm-families-")


@functools.cache
def family_path(family: str) -> str:
    """Directory of ``family``'s tiny checkpoint, written with ``save_pretrained``."""
    return str(save_tiny_family(family, Path(_ROOT.name) / family))


@functools.cache
def family_model(family: str, dtype: torch.dtype = torch.float32) -> HookedLVLM:
    """``family``'s tiny checkpoint loaded with ``HookedLVLM.from_pretrained`` (in ``dtype``)."""
    torch.manual_seed(0)
    return HookedLVLM.from_pretrained(family_path(family), device="cpu", dtype=dtype)


def sized_images(*shapes: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """Random RGB images of the given ``(height, width)`` shapes (deterministic)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def greedy_image_attribution(model: HookedLVLM, sample, *, n_masks: int):
    """Image-token attribution of the greedy answer with the zero baseline, no gap filter
    (random tiny models have small gaps; these tests check maps and geometry, not fits)."""
    with torch.no_grad():
        target = int(model.final_logits(sample).argmax())
    return image_token_attribution(
        model, sample, baseline="zero", target=target, n_masks=n_masks,
        min_logit_gap=-1e9, progress=False,
    )  # fmt: skip
