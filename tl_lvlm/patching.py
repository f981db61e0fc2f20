"""TransformerLens activation patching with the images carried along.

``transformer_lens.patching`` functions take ``(model, corrupted_tokens,
clean_cache, metric)`` and run ``model.run_with_hooks(corrupted_tokens, ...)``
with tokens alone: on an LVLM the ``pixel_values`` are silently dropped and the
image tokens are embedded as if they were text. Every ``get_act_patch_*``
function and ``generic_activation_patch`` is re-exported here with the same
arguments, except that the model is a :class:`~tl_lvlm.HookedLVLM` and the
tokens are :class:`~tl_lvlm.LVLMInputs`::

    clean = model.prepare(cat_image, question)
    corrupted = model.prepare(dog_image, question)   # same tokens, other image
    _, clean_cache = model.run_with_cache(clean)
    result = tl_lvlm.patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted, clean_cache, metric
    )
"""

from __future__ import annotations

from collections.abc import Callable

import transformer_lens.patching as _tl_patching

from attribution.own_checks import checks_own_arguments
from tl_lvlm.inputs import LVLMInputs


def with_images(tl_fn: Callable, name: str | None = None) -> Callable:
    """Wrap a ``transformer_lens.patching`` function to run with ``LVLMInputs``.

    The wrapper binds the model to the corrupted inputs (``model.bind``), so each
    patched forward carries their images, attention mask and positions.
    """

    @checks_own_arguments
    def patched(model, corrupted_inputs: LVLMInputs, *args, **kwargs):
        if not isinstance(corrupted_inputs, LVLMInputs):
            raise TypeError(
                f"{name} in tl_lvlm.patching takes LVLMInputs from model.prepare(...) "
                f"as corrupted inputs, got {type(corrupted_inputs).__name__}; for text-only "
                "models use transformer_lens.patching directly"
            )
        return tl_fn(model.bind(corrupted_inputs), corrupted_inputs.input_ids, *args, **kwargs)

    patched.__doc__ = (
        f"``transformer_lens.patching.{name}`` with images carried along: pass a "
        "HookedLVLM and LVLMInputs instead of a model and tokens.\n\n" + (tl_fn.__doc__ or "")
    )
    patched.__name__ = patched.__qualname__ = name
    return patched


__all__ = ["with_images"]
for _name in dir(_tl_patching):
    if _name.startswith("get_act_patch_") or _name == "generic_activation_patch":
        globals()[_name] = with_images(getattr(_tl_patching, _name), _name)
        __all__.append(_name)
