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

import importlib

# Public name -> module. Imported on first access (PEP 562), so that `import tl_lvlm` and
# `tl-lvlm --help` do not pay for torch / transformers until something needs them.
_EXPORTS = {
    "ImageKVBaseline": "tl_lvlm.ablation",
    "image_kv_ablation": "tl_lvlm.ablation",
    "image_kv_ablation_hooks": "tl_lvlm.ablation",
    "image_kv_baseline": "tl_lvlm.ablation",
    "AblationEngine": "tl_lvlm.engine",
    "LVLMFamily": "tl_lvlm.families",
    "PatchGeometry": "tl_lvlm.families",
    "register_family": "tl_lvlm.families",
    "PAPER_EDGE_SETS": "tl_lvlm.flow",
    "FlowSweep": "tl_lvlm.flow",
    "Knockout": "tl_lvlm.flow",
    "flow_sweep": "tl_lvlm.flow",
    "knockout": "tl_lvlm.flow",
    "HeadAttributionResult": "tl_lvlm.head_attribution",
    "answer_token_id": "tl_lvlm.head_attribution",
    "head_attribution": "tl_lvlm.head_attribution",
    "ImageAttribution": "tl_lvlm.image_attribution",
    "image_token_attribution": "tl_lvlm.image_attribution",
    "object_mass": "tl_lvlm.image_attribution",
    "GROUPS": "tl_lvlm.inputs",
    "LVLMInputs": "tl_lvlm.inputs",
    "SUPPORTED_ARCHITECTURES": "tl_lvlm.model",
    "BoundLVLM": "tl_lvlm.model",
    "HookedLVLM": "tl_lvlm.model",
    "LLAVA_15_TEMPLATE": "tl_lvlm.templates",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_lvlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
