"""Image-K/V head ablation: baselines and the hook-based reference implementation.

Ablating head ``(l, h)`` replaces that head's keys and values at every image
position by a baseline, as seen by the text queries after the image (scope
``"text"``, the default); the image tokens' own computation is untouched. Scope
``"all"`` also changes what the image queries see. With grouped-query attention
the ablation is per *query* head: the shared KV head stays clean for the other
query heads of its group.

Keep masks are bool tensors, True = kept:

- ``[batch, n_layers, n_heads]``: per head, all image positions at once;
- ``[batch, n_layers, n_heads, n_image]``: per head and image position (e.g. for
  image-token attribution, expand a ``[batch, n_image]`` mask over heads with
  ``mask[:, None, None].expand(-1, n_layers, n_heads, -1)``).

How the hooks do it. ``hook_k`` / ``hook_v`` hold one tensor per *KV* head,
before RoPE, and editing them would also change what the image queries see, so
the ablation is applied where attention is per query head instead:

- ``hook_attn_scores`` (pre-softmax ``[batch, head, q, k]``): for ablated heads
  and affected query rows, the image columns become ``q . rot(K_base) * scale``,
  with the baseline keys rotated by the same RoPE cos/sin as the real image
  positions (read at ``hook_cos`` / ``hook_sin``);
- ``hook_z`` (``[batch, pos, head, d_head]``): adds
  ``pattern[image columns] @ (V_base - V_clean)`` for the same heads and rows,
  which turns the clean values at the image columns into the baseline.

Use the hooks with ``run_with_hooks`` or the :func:`image_kv_ablation` context
manager; :class:`~tl_lvlm.ablation.engine.AblationEngine` computes the same thing fast for
many masks on one sample.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from attribution.own_checks import checks_own_arguments
from tl_lvlm._utils.hooks import HookList, record_into
from tl_lvlm._utils.tensors import gather_positions
from tl_lvlm.ablation.baseline import GeometryMeanBaseline, ImageKVBaseline
from tl_lvlm.ablation.recomputed import recomputed_ablation_hooks
from tl_lvlm.ablation.scope import Scope, ablated_queries, check_scope
from tl_lvlm.inputs import LVLMInputs

if TYPE_CHECKING:
    from tl_lvlm.model import HookedLVLM


@checks_own_arguments
def check_keep(
    keep: Tensor | np.ndarray,
    *,
    n_rows: int | None,
    n_layers: int,
    n_heads: int,
    n_image: int,
    name: str = "keep",
) -> Bool[Tensor, "batch n_layers n_heads"] | Bool[Tensor, "batch n_layers n_heads n_image"]:
    """Validate a keep mask (True = kept) and return it as a bool tensor.

    Args:
        keep: ``[batch, n_layers, n_heads]`` or ``[batch, n_layers, n_heads, n_image]``
            bool tensor or numpy array.
        n_rows: required batch size, or None for any non-zero batch.

    Raises:
        TypeError: not a tensor / array, or not boolean.
        ValueError: wrong shape.
    """
    if isinstance(keep, np.ndarray):
        if keep.dtype != np.bool_:
            raise TypeError(
                f"{name} must be boolean (True = head kept), got numpy {keep.dtype}; "
                "convert with `mask.astype(bool)`"
            )
        keep = torch.from_numpy(keep)
    if not isinstance(keep, Tensor):
        raise TypeError(
            f"{name} must be a bool torch tensor or numpy array, got {type(keep).__name__}"
        )
    if keep.dtype != torch.bool:
        raise TypeError(
            f"{name} must be boolean (True = head kept), got {keep.dtype}; convert with "
            "`mask.bool()` (or `mask > 0.5` for probabilities)"
        )
    rows = "batch" if n_rows is None else n_rows
    head_shape = (n_layers, n_heads)
    if (
        keep.ndim not in (3, 4)
        or tuple(keep.shape[1:3]) != head_shape
        or (keep.ndim == 4 and keep.shape[3] != n_image)
        or (n_rows is not None and keep.shape[0] != n_rows)
        or keep.shape[0] == 0
    ):
        hint = ""
        if keep.ndim == 2 and keep.shape[-1] == n_layers * n_heads:
            hint = f"; reshape flat masks with `mask.reshape(-1, {n_layers}, {n_heads})`"
        raise ValueError(
            f"{name} must have shape [{rows}, n_layers={n_layers}, n_heads={n_heads}] or "
            f"[{rows}, {n_layers}, {n_heads}, n_image={n_image}], got {tuple(keep.shape)}{hint}"
        )
    return keep


def rotary_fn(model: HookedLVLM, layer: int = 0) -> Callable:
    """The ``apply_rotary_pos_emb(q, k, cos, sin)`` of ``layer``'s HF attention code
    (:meth:`~tl_lvlm.families.LVLMFamily.rotary_fn` of the model's family)."""
    return model.family.rotary_fn(layer)


@checks_own_arguments
def image_kv_ablation_hooks(
    model: HookedLVLM,
    inputs: LVLMInputs,
    baseline: ImageKVBaseline | GeometryMeanBaseline,
    # Any tensor or array: check_keep refuses the wrong dtype or shape with the fix, where
    # a type checker would only say it does not match.
    keep: Tensor | np.ndarray,
    *,
    scope: Scope = "text",
) -> HookList:
    """Forward hooks that ablate image K/V per batch row, layer and query head.

    Args:
        model: the model ``inputs`` will be run through.
        inputs: the batch the hooks are for (rows may be left-padded).
        baseline: from :func:`image_kv_baseline` for the same template and image span, or
            a per-geometry mean (all rows of one image size).
        keep: ``[batch, n_layers, n_heads]`` (True = head kept) or
            ``[batch, n_layers, n_heads, n_image]`` (True = that head sees the clean
            K/V at that image position); row i applies to ``inputs`` row i.
        scope: ``"text"``: only queries after the image see the baseline;
            ``"all"``: image queries too.

    Returns:
        ``[(hook_name, fn), ...]`` for ``model.run_with_hooks(inputs, fwd_hooks=...)``,
        edits of the scores (:func:`score_edit_hooks`) or recomputed attention
        (:func:`~tl_lvlm.ablation.recomputed.recomputed_ablation_hooks`), as the family's
        :attr:`~tl_lvlm.families.LVLMFamily.attention_edits` says.
    """
    check_scope(scope)
    model.family.require("ablation")
    baseline = baseline.for_inputs(model, inputs)
    keep = check_keep(
        keep,
        n_rows=inputs.batch_size,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
        n_image=baseline.n_image,
    ).to(model.device)
    if keep.ndim == 3:
        keep = keep[..., None]
    baseline = baseline.to(model.device, model.hf_model.dtype)
    if model.family.attention_edits == "recompute":
        return recomputed_ablation_hooks(model, inputs, baseline, keep, scope)
    return score_edit_hooks(model, inputs, baseline, keep, scope=scope)


def score_edit_hooks(
    model: HookedLVLM,
    inputs: LVLMInputs,
    baseline: ImageKVBaseline,
    keep: Bool[Tensor, "batch n_layers n_heads n_image_or_1"],
    *,
    scope: Scope = "text",
) -> HookList:
    """The hook reference's edits of ``hook_attn_scores`` and ``hook_z`` (module docstring).

    Arguments as validated by :func:`image_kv_ablation_hooks` (``keep`` with a last
    axis of ``n_image`` or 1, ``baseline`` on the model's device and dtype). Layers
    whose heads are all kept get no hooks.
    """
    image = inputs.image  # [batch, n_image] padded positions; rows share n_image
    first, affected = ablated_queries(model, inputs, scope)
    hooks: HookList = []
    for layer in range(model.n_layers):
        ablated = ~keep[:, layer]  # [batch, n_heads, n_image or 1]
        if not bool(ablated.any()):
            continue
        state = _LayerAblation(
            layer=layer,
            image=image,
            first=first,
            swap=ablated[:, :, None, :] & affected[:, None],
            k_base=baseline.k[layer],
            v_base=baseline.v[layer],
            scaling=model.family.attention_scaling(layer),
            rotate=functools.partial(model.family.rotate_keys, layer),
        )
        hooks += state.hooks()
    return hooks


@contextlib.contextmanager
def image_kv_ablation(
    model: HookedLVLM,
    inputs: LVLMInputs,
    baseline: ImageKVBaseline,
    # Any tensor or array: check_keep refuses the wrong dtype or shape with the fix, where
    # a type checker would only say it does not match.
    keep: Tensor | np.ndarray,
    *,
    scope: Scope = "text",
) -> Iterator[HookedLVLM]:
    """Context manager: forward passes of ``inputs`` inside run with the ablation.

    Example::

        with image_kv_ablation(model, inputs, baseline, keep):
            logits = model(inputs)
    """
    hooks = image_kv_ablation_hooks(model, inputs, baseline, keep, scope=scope)
    with model.hooks(fwd_hooks=hooks):
        yield model


@dataclass
class _LayerAblation:
    """Hooks of one layer, and what they read from the running forward pass.

    The hooks fire in the order ``hook_v``, ``hook_cos``/``hook_sin``,
    ``hook_rot_q``, ``hook_attn_scores``, ``hook_pattern``, ``hook_z``; the reading
    hooks keep the tensors the editing hooks need.
    """

    layer: int
    image: Int[Tensor, "batch n_image"]
    #: First query row edited; rows before it see no baseline in any batch row.
    first: int
    #: True where query row ``first + i`` of (batch row, head) sees the baseline at an
    #: image column; a float is how much of it (``1 - g``, the gated interpolation the
    #: gradient tests check the engine against).
    swap: (
        Bool[Tensor, "batch n_heads q_edited n_image"]
        | Float[Tensor, "batch n_heads q_edited n_image"]
    )
    k_base: Float[Tensor, "n_kv_heads n_image d_head"]
    v_base: Float[Tensor, "n_kv_heads n_image d_head"]
    scaling: float
    #: ``(k, cos, sin) -> k`` rotated as this layer's attention rotates keys.
    rotate: Callable
    seen: dict[str, Tensor] = field(default_factory=dict)

    def hooks(self) -> HookList:
        prefix = f"blocks.{self.layer}.attn"

        return [
            (f"{prefix}.hook_v", record_into(self.seen, "v")),
            (f"{prefix}.hook_cos", record_into(self.seen, "cos")),
            (f"{prefix}.hook_sin", record_into(self.seen, "sin")),
            (f"{prefix}.hook_rot_q", record_into(self.seen, "q")),
            (f"{prefix}.hook_attn_scores", self.edit_scores),
            (f"{prefix}.hook_pattern", record_into(self.seen, "pattern")),
            (f"{prefix}.hook_z", self.edit_z),
        ]

    def _per_head(self, t: Tensor, n_heads: int) -> Tensor:
        """``[batch, n_kv_heads, ...]`` -> ``[batch, n_heads, ...]``; head h reads KV h // group."""
        return t.repeat_interleave(n_heads // t.shape[1], dim=1)

    def _image_columns(
        self, t: Float[Tensor, "batch head q k"]
    ) -> Int[Tensor, "batch head q n_image"]:
        b, h, q, _ = t.shape
        if self.swap.shape[0] != b:
            raise ValueError(
                f"the ablation hooks were built for a batch of {self.swap.shape[0]} rows but "
                f"ran on {b}; build the hooks for the inputs you run"
            )
        return self.image[:, None, None, :].expand(b, h, q, -1)

    def edit_scores(self, scores: Float[Tensor, "batch head q k"], hook) -> Tensor:
        edited = scores[:, :, self.first :]
        cols = self._image_columns(edited)
        # hook_rot_q is [batch, pos, head, d_head]
        q = self.seen["q"][:, self.first :].transpose(1, 2)
        n_heads = q.shape[1]
        cos, sin = (
            gather_positions(self.seen[n].expand(q.shape[0], -1, -1), self.image, dim=1)
            for n in ("cos", "sin")
        )  # [batch, n_image, d_head]
        k_base = self.k_base[None].expand(q.shape[0], -1, -1, -1)
        k_rot = self.rotate(k_base, cos, sin)  # [batch, n_kv_heads, n_image, d_head]
        base = torch.matmul(q, self._per_head(k_rot, n_heads).transpose(-1, -2)) * self.scaling
        clean = edited.gather(-1, cols)
        edited = edited.scatter(-1, cols, torch.where(self.swap, base.to(scores.dtype), clean))
        return scores.slice_scatter(edited, dim=2, start=self.first)

    def edit_z(self, z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        pattern = self.seen["pattern"][:, :, self.first :]
        n_heads = pattern.shape[1]
        weights = pattern.gather(-1, self._image_columns(pattern)) * self.swap
        v_clean = gather_positions(self.seen["v"], self.image, dim=1).transpose(1, 2)
        delta = self._per_head(self.v_base[None] - v_clean, n_heads)  # [batch, head, n_image, d]
        self.seen.clear()
        dz = torch.matmul(weights, delta).transpose(1, 2).to(z.dtype)
        return z.slice_scatter(z[:, self.first :] + dz, dim=1, start=self.first)
