"""tl-lvlm: mechanistic interpretability of LLaVA-style vision-language models on TransformerLens.

The main entry points; each step is also a function of its own module:

Subpackages by layer, each importing only those above it in this list:

- ``tl_lvlm.inputs``: :class:`LVLMInputs` and token groups, image conversion, templates.
- ``tl_lvlm.families``: one :class:`LVLMFamily` per architecture; :func:`register_family`
  adds one.
- ``tl_lvlm.model``: :class:`HookedLVLM`: load, ``prepare`` inputs with token groups, run
  with hooks or a cache, generate.
- ``tl_lvlm.ablation``: image-K/V baselines, the hook reference and :class:`AblationEngine`,
  the same ablation for thousands of masks, fast.
- ``tl_lvlm.analysis``: :func:`head_attribution` (the paper's method, with baselines and
  evaluation) and :func:`image_token_attribution`; ``tl_lvlm.flow``: attention knockout
  between token groups and layer-window sweeps; ``tl_lvlm.patching``: TransformerLens
  patching utilities with images carried along.
- ``tl_lvlm.cli``: the ``tl-lvlm`` command. ``tl_lvlm.zoo``: the bundled model.
  ``tl_lvlm.testing``: tiny checkpoints of every family, for your tests.
"""

import importlib

# Public name -> module. Imported on first access (PEP 562), so that `import tl_lvlm` and
# `tl-lvlm --help` do not pay for torch / transformers until something needs them.
_EXPORTS = {
    "ImageKVBaseline": "tl_lvlm.ablation",
    "resolve_baseline": "tl_lvlm.ablation",
    "image_kv_ablation": "tl_lvlm.ablation",
    "image_kv_ablation_hooks": "tl_lvlm.ablation",
    "image_kv_baseline": "tl_lvlm.ablation",
    "AblationEngine": "tl_lvlm.ablation",
    "LVLMFamily": "tl_lvlm.families",
    "PatchGeometry": "tl_lvlm.families",
    "register_family": "tl_lvlm.families",
    "PAPER_EDGE_SETS": "tl_lvlm.flow",
    "FlowSweep": "tl_lvlm.flow",
    "Knockout": "tl_lvlm.flow",
    "flow_sweep": "tl_lvlm.flow",
    "knockout": "tl_lvlm.flow",
    "HeadAttributionConfig": "tl_lvlm.analysis.heads",
    "HeadAttributionResult": "tl_lvlm.analysis.heads",
    "answer_token_id": "tl_lvlm.analysis.heads",
    "head_attribution": "tl_lvlm.analysis.heads",
    "ImageAttribution": "tl_lvlm.analysis.image_tokens",
    "image_token_attribution": "tl_lvlm.analysis.image_tokens",
    "object_mass": "tl_lvlm.analysis.image_tokens",
    "GROUPS": "tl_lvlm.inputs",
    "LVLMInputs": "tl_lvlm.inputs",
    "supported_architectures": "tl_lvlm.families",
    "BoundLVLM": "tl_lvlm.model",
    "HookedLVLM": "tl_lvlm.model",
    "LLAVA_15_TEMPLATE": "tl_lvlm.inputs.templates",
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
    "AblationEngine",
    "BoundLVLM",
    "FlowSweep",
    "HeadAttributionConfig",
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
    "resolve_baseline",
    "supported_architectures",
]
__version__ = "0.1.0"
