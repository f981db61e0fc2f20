"""``hook_embed`` at the residual stream's input, image positions included.

On its own, the bridge's ``hook_embed`` (``embed.hook_out``) fires on the output of
the token embedding. An LVLM embeds its prompt there, ``<image>`` tokens included,
and only afterwards scatters the projected image features over the image positions
and hands the merged embeddings to the language model as ``inputs_embeds``. So at
image positions the bridge's ``hook_embed`` holds the embedding of the ``<image>``
token id, which never reaches the residual stream: ``cache.decompose_resid()`` is
wrong there and an edit there has no effect.

:func:`hook_embed_at_residual_input` moves the hook point for the duration of a run:
the token embedding runs without it, and the same ``HookPoint`` fires on the merged
``inputs_embeds`` at the language model's input. The cache then holds what enters
block 0 at every position (``hook_embed == blocks.0.hook_resid_pre``), and an edit
of ``hook_embed`` is what block 0 reads. Hooks are the user's own: the hook point
object, its name and its registered hooks are unchanged, it only fires elsewhere,
once per forward. Any family whose language model is called with merged
``inputs_embeds`` (every registered family) works the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def hook_embed_at_residual_input(model) -> Iterator[None]:
    """Within the block, ``hook_embed`` fires on what the language model receives.

    Nests: a forward inside a hook of another fires the real hook point once, from
    the outer use's pre-hook (the inner one moves the stand-in).

    Raises:
        RuntimeError: during the run, when the language model is called without
            ``inputs_embeds`` (a family that embeds inside the language model, where
            the image features cannot have been merged before it).
    """
    # Imported here: importing tl_lvlm does not import TransformerLens.
    from transformer_lens.hook_points import HookPoint

    embed = model.bridge.embed
    hook_point = embed.hook_out

    def fire(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError(
                f"{type(module).__name__} was called without inputs_embeds, so hook_embed "
                "cannot be placed on the merged text and image embeddings; this family "
                "does not merge image features before its language model"
            )
        return args, {**kwargs, "inputs_embeds": hook_point(embeds)}

    handle = model.family.decoder.register_forward_pre_hook(fire, with_kwargs=True)
    # A bare hook point stands in inside the token embedding (an identity there).
    embed._modules["hook_out"] = HookPoint()
    try:
        yield
    finally:
        embed._modules["hook_out"] = hook_point
        handle.remove()
