"""LVLM families: one module per Hugging Face architecture, and the registry.

- :class:`LVLMFamily` (``base``): capabilities as class attributes, quirks as methods.
- :func:`register_family` / :func:`family_of` (``registry``): architecture -> family.
- :class:`PatchGeometry`, :class:`TiledPatchGeometry` (``geometry``): where image tokens lie
  on the image.
- Built-in families, one module each: LLaVA-1.5 (``llava``), LLaVA-NeXT (``llava_next``),
  LLaVA-OneVision (``llava_onevision``), Gemma 3 (``gemma3``), Gemma 4 (``gemma4``), Qwen2-VL
  (``qwen2_vl``), Qwen2.5-VL (``qwen2_5_vl``), Qwen3-VL and Qwen3-VL-MoE (``qwen3_vl``),
  Qwen3.5 (``qwen3_5``; hybrid decoder, head ablation refused), InternVL (``internvl``),
  Idefics3 (``idefics3``), SmolVLM (``smolvlm``), Mistral 3 (``mistral3``).

Add a family without touching tl-lvlm::

    from tl_lvlm.families import Llava15Family, register_family

    @register_family
    class MyLlava(Llava15Family):
        name = "My LLaVA"
        architecture = "MyLlavaForConditionalGeneration"
        template = "Q: <image>\\n{question}\\nA:"
"""

from tl_lvlm.families.base import ANALYSES, LVLMFamily
from tl_lvlm.families.gemma3 import Gemma3Family
from tl_lvlm.families.gemma4 import Gemma4Family
from tl_lvlm.families.geometry import PatchGeometry, TiledPatchGeometry
from tl_lvlm.families.idefics3 import Idefics3Family
from tl_lvlm.families.internvl import InternVLFamily
from tl_lvlm.families.llava import Llava15Family
from tl_lvlm.families.llava_next import LlavaNextFamily
from tl_lvlm.families.llava_onevision import LlavaOnevisionFamily
from tl_lvlm.families.mistral3 import Mistral3Family
from tl_lvlm.families.qwen2_5_vl import Qwen2_5_VLFamily
from tl_lvlm.families.qwen2_vl import Qwen2VLFamily
from tl_lvlm.families.qwen3_5 import Qwen3_5Family
from tl_lvlm.families.qwen3_vl import Qwen3VLFamily, Qwen3VLMoeFamily
from tl_lvlm.families.registry import (
    FAMILIES,
    family_of,
    register_family,
    registered_families,
    supported_architectures,
    unregister_family,
)
from tl_lvlm.families.smolvlm import SmolVLMFamily

for _family in (
    Llava15Family,
    LlavaNextFamily,
    Gemma3Family,
    LlavaOnevisionFamily,
    Qwen2_5_VLFamily,
    InternVLFamily,
    Gemma4Family,
    Qwen3VLFamily,
    Qwen3VLMoeFamily,
    Idefics3Family,
    SmolVLMFamily,
    Mistral3Family,
    Qwen2VLFamily,
    Qwen3_5Family,
):
    register_family(_family)

__all__ = [
    "ANALYSES",
    "FAMILIES",
    "Gemma3Family",
    "InternVLFamily",
    "Gemma4Family",
    "Idefics3Family",
    "LVLMFamily",
    "Llava15Family",
    "LlavaNextFamily",
    "LlavaOnevisionFamily",
    "Mistral3Family",
    "PatchGeometry",
    "Qwen2VLFamily",
    "TiledPatchGeometry",
    "Qwen2_5_VLFamily",
    "Qwen3VLFamily",
    "Qwen3VLMoeFamily",
    "SmolVLMFamily",
    "Qwen3_5Family",
    "family_of",
    "register_family",
    "registered_families",
    "supported_architectures",
    "unregister_family",
]
