"""tl-lvlm: mechanistic interpretability of LLaVA-style vision-language models on TransformerLens."""

from tl_lvlm.inputs import GROUPS, LVLMInputs
from tl_lvlm.model import LLAVA_15_TEMPLATE, SUPPORTED_ARCHITECTURES, BoundLVLM, HookedLVLM

__all__ = [
    "GROUPS",
    "LLAVA_15_TEMPLATE",
    "SUPPORTED_ARCHITECTURES",
    "BoundLVLM",
    "HookedLVLM",
    "LVLMInputs",
]
__version__ = "0.1.0"
