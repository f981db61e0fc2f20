"""One tiny builder per registered family, and saving a tiny checkpoint.

A builder returns a complete Hugging Face model and its real processor (PIL-backend image
processor, so no torchvision), with a chat template in the format of the family's public
checkpoints. :func:`save_tiny_family` writes them with ``save_pretrained``, so a test loads
them through ``HookedLVLM.from_pretrained(path)`` as a user loads a hub checkpoint.
A new family adds its module beside this one and one entry to :data:`BUILDERS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tl_lvlm.testing._tiny import TinyFamilyConfig
from tl_lvlm.testing.gemma3 import build_tiny_gemma3
from tl_lvlm.testing.gemma4 import build_tiny_gemma4
from tl_lvlm.testing.idefics3 import build_tiny_idefics3
from tl_lvlm.testing.internvl import build_tiny_internvl, build_tiny_internvl3_5
from tl_lvlm.testing.llava import build_tiny_llava_15
from tl_lvlm.testing.llava_next import build_tiny_llava_next
from tl_lvlm.testing.llava_onevision import build_tiny_llava_onevision
from tl_lvlm.testing.mistral3 import build_tiny_mistral3
from tl_lvlm.testing.qwen2_5_vl import build_tiny_qwen2_5_vl
from tl_lvlm.testing.qwen2_vl import build_tiny_qwen2_vl
from tl_lvlm.testing.qwen3_5 import build_tiny_qwen3_5
from tl_lvlm.testing.qwen3_vl import build_tiny_qwen3_vl, build_tiny_qwen3_vl_moe
from tl_lvlm.testing.smolvlm import build_tiny_smolvlm
from tl_lvlm.zoo.tiny_llava import save_atomic

#: Family name -> builder of ``(hf_model, processor)``.
BUILDERS: dict[str, Callable] = {
    "llava": build_tiny_llava_15,
    "llava_next": build_tiny_llava_next,
    "gemma3": build_tiny_gemma3,
    "llava_onevision": build_tiny_llava_onevision,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "internvl": build_tiny_internvl,
    # The same family on InternVL-3.5's Qwen3 decoder (q/k norms, tied unembedding).
    "internvl3_5": build_tiny_internvl3_5,
    "gemma4": build_tiny_gemma4,
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "mistral3": build_tiny_mistral3,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen3_5": build_tiny_qwen3_5,
}


def save_tiny_family(
    family: str, path: str | os.PathLike, config: TinyFamilyConfig | None = None
) -> Path:
    """Build the tiny ``family`` checkpoint (see :data:`BUILDERS`) and save it at ``path``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(BUILDERS)}")
    return save_atomic(path, *BUILDERS[family](config))
