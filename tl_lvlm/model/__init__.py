"""The model: :class:`HookedLVLM` on TransformerLens's bridge, and its helpers.

- ``hooked_lvlm``: :class:`HookedLVLM` (load, ``prepare``, run with hooks or a cache,
  ``generate``) and :class:`BoundLVLM` (token-only TransformerLens calls with images).
- ``embed_hook``: ``hook_embed`` at the language model's input (image features included).
- ``unembed``: residual directions with the final norm's weight folded in.

Sits above the families: loading asks the family registry which family a checkpoint is.
"""

from tl_lvlm.model.hooked_lvlm import BoundLVLM, HookedLVLM, resolve_dtype

__all__ = ["BoundLVLM", "HookedLVLM", "resolve_dtype"]
