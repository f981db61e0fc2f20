"""tl-lvlm: mechanistic interpretability of LLaVA-style vision-language models on TransformerLens.

The main entry points; each step is also a function of its own module:

- :class:`HookedLVLM` (``tl_lvlm.model``): load, ``prepare`` inputs with token groups, run with
  hooks or a cache.
- ``tl_lvlm.families``: one :class:`LVLMFamily` per architecture; :func:`register_family`
  adds one.
- ``tl_lvlm.ablation``: image-K/V head ablation hooks (the reference) and mean/zero baselines.
- ``tl_lvlm.engine``: :class:`AblationEngine`, the same ablation for thousands of masks, fast.
- ``tl_lvlm.head_attribution``: the paper's head attribution with baselines and evaluation.
- ``tl_lvlm.flow``: attention knockout between token groups and layer-window sweeps.
- ``tl_lvlm.image_attribution``: the same regression over image positions.
- ``tl_lvlm.patching``: TransformerLens patching utilities with images carried along.
"""

from tl_lvlm.ablation import (
    ImageKVBaseline,
    image_kv_ablation,
    image_kv_ablation_hooks,
    image_kv_baseline,
)
from tl_lvlm.engine import AblationEngine
from tl_lvlm.families import LVLMFamily, PatchGeometry, register_family
from tl_lvlm.flow import PAPER_EDGE_SETS, FlowSweep, Knockout, flow_sweep, knockout
from tl_lvlm.head_attribution import HeadAttributionResult, answer_token_id, head_attribution
from tl_lvlm.image_attribution import ImageAttribution, image_token_attribution, object_mass
from tl_lvlm.inputs import GROUPS, LVLMInputs
from tl_lvlm.model import SUPPORTED_ARCHITECTURES, BoundLVLM, HookedLVLM
from tl_lvlm.templates import LLAVA_15_TEMPLATE

__all__ = [
    "GROUPS",
    "LLAVA_15_TEMPLATE",
    "PAPER_EDGE_SETS",
    "SUPPORTED_ARCHITECTURES",
    "AblationEngine",
    "BoundLVLM",
    "FlowSweep",
    "HeadAttributionResult",
    "HookedLVLM",
    "ImageAttribution",
    "ImageKVBaseline",
    "Knockout",
    "LVLMFamily",
    "LVLMInputs",
    "PatchGeometry",
    "answer_token_id",
    "flow_sweep",
    "head_attribution",
    "image_kv_ablation",
    "image_kv_ablation_hooks",
    "image_kv_baseline",
    "image_token_attribution",
    "knockout",
    "object_mass",
    "register_family",
]
__version__ = "0.1.0"
