"""Image-K/V ablation and knockout hooks for a bridge that keeps attention native.

Where TransformerBridge runs a Hugging Face attention module as it is
(``AttentionBridge(maintain_native_attention=True)``, Qwen2.5-VL's M-RoPE text
attention), ``hook_attn_scores`` and ``hook_pattern`` fire after the module has
used them, and edits there are discarded. ``hook_q`` / ``hook_k`` / ``hook_v``
(the projections' outputs, before RoPE) and ``hook_z`` (the input of ``o_proj``)
are live. The hooks here read q, k and v (``hook_q/k/v``, or where the family's
:meth:`~tl_lvlm.families.LVLMFamily.attention_inputs` says), rotate them with the model's own RoPE
``(cos, sin)`` at the family's position ids, recompute attention for the query rows
that an edit touches (eager attention: scaled scores, additive mask, softmax in
fp32) and write the edited rows' outputs into ``hook_z``:

- image-K/V ablation: at the affected (row, head, query, image column), the score
  against the rotated baseline key and the baseline value replace the clean ones;
- knockout: the blocked (query, key) pairs get the dtype's minimum score.

This is a hook-level implementation that shares no code with the
:class:`~tl_lvlm.ablation.engine.AblationEngine` (which runs a KV-cached prefix and a
custom attention function), so the engine can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_lvlm._utils.hooks import HookList, record_into
from tl_lvlm._utils.tensors import gather_positions
from tl_lvlm.ablation.scope import ablated_queries

if TYPE_CHECKING:
    from tl_lvlm.ablation.baseline import ImageKVBaseline
    from tl_lvlm.flow import Knockout
    from tl_lvlm.inputs import LVLMInputs
    from tl_lvlm.model import HookedLVLM


def _rotations(model: HookedLVLM, inputs: LVLMInputs) -> list[tuple[Tensor, Tensor]]:
    """Per-layer RoPE ``(cos, sin)`` ``[batch, pos, d_head]`` at the inputs' position ids."""
    x = torch.zeros((), dtype=model.hf_model.dtype, device=model.device)
    return model.family.rotations(x, model.family.position_ids(inputs).to(model.device))


@dataclass
class _Recompute:
    """One layer's recomputed attention from ``hook_q/k/v``, written into ``hook_z``.

    ``edit(scores, q, v, hook)`` returns ``(scores, out_fn, rows)``: the edited
    pre-softmax scores ``[batch, head, q_edited, key]``, a function that turns the
    probabilities into the edited output ``[batch, head, q_edited, d_head]``, and
    which ``[batch, head, q_edited]`` rows take that output (the rest keep ``hook_z``).
    """

    model: HookedLVLM
    layer: int
    cos: Float[Tensor, "batch pos d_head"]
    sin: Float[Tensor, "batch pos d_head"]
    key_ok: Bool[Tensor, "batch pos"]
    first: int
    edit: Callable
    seen: dict[str, Tensor] = field(default_factory=dict)

    def hooks(self) -> HookList:
        family = self.model.family
        inputs = zip("qkv", (family.query_hook, family.key_hook, family.value_hook), strict=True)
        return [
            *((hook(self.layer)[0], record_into(self.seen, name)) for name, hook in inputs),
            (f"blocks.{self.layer}.attn.hook_z", self.edit_z),
        ]

    def edit_z(self, z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        family = self.model.family
        # Attention works on [batch, heads, pos, d_head]; the hooks have pos at axis 1 or 2.
        pos_dims = {
            "q": family.query_hook(self.layer)[1],
            "k": family.key_hook(self.layer)[1],
            "v": family.value_hook(self.layer)[1],
        }
        q, k, v = (
            self.seen.pop(n).transpose(1, 2) if pos_dims[n] == 1 else self.seen.pop(n)
            for n in ("q", "k", "v")
        )
        if q.shape[0] != self.cos.shape[0] or q.shape[2] != self.cos.shape[1]:
            raise ValueError(
                f"{hook.name}: the hooks were built for inputs of [batch, pos] = "
                f"{tuple(self.cos.shape[:2])} but ran on {tuple(q.shape[:1] + q.shape[2:3])}; "
                "build the hooks for the inputs you run (no KV cache)"
            )
        q, k = family.rotary_fn(self.layer)(q, k, self.cos, self.sin)
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        q = q[:, :, self.first :]
        scores = torch.matmul(q, k.transpose(-1, -2)) * family.attention_scaling(self.layer)
        n_q, n_k = scores.shape[-2:]
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=z.device).tril(self.first)
        allowed = causal[None, None] & self.key_ok[:, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        scores, output, rows = self.edit(scores, q, v, hook)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = output(probs).transpose(1, 2).to(z.dtype)  # [batch, q_edited, head, d_head]
        edited = torch.where(rows.transpose(1, 2)[..., None], out, z[:, self.first :])
        return z.slice_scatter(edited, dim=1, start=self.first)


def _recomputable(model: HookedLVLM, inputs: LVLMInputs) -> Bool[Tensor, "batch pos"]:
    """The keys each row may attend to (its attention mask), after refusing what the
    recomputation does not implement: it never guesses."""
    family = model.family
    reasons = family.attention_refusals(inputs.seq_len)
    if family.bidirectional_image:
        reasons.insert(0, "image tokens attend to each other both ways")
    if reasons:
        raise NotImplementedError(
            f"{family.name}: the recomputed-attention hooks implement causal eager attention "
            f"only, but {'; '.join(reasons)}"
        )
    return inputs.attention_mask.bool().to(model.device)


def recomputed_ablation_hooks(
    model: HookedLVLM,
    inputs: LVLMInputs,
    baseline: ImageKVBaseline,
    keep: Bool[Tensor, "batch n_layers n_heads n_image_or_1"],
    scope: str,
) -> HookList:
    """The image-K/V ablation hook reference by recomputed attention (module docstring).

    Arguments as validated by :func:`tl_lvlm.ablation.image_kv_ablation_hooks`.
    Layers whose heads are all kept get no hooks.
    """
    key_ok = _recomputable(model, inputs)
    first, affected = ablated_queries(model, inputs, scope)
    image = inputs.image.to(model.device)
    rotations = _rotations(model, inputs)
    hooks: HookList = []
    for layer in range(model.n_layers):
        ablated = ~keep[:, layer]  # [batch, n_heads, n_image or 1]
        if not bool(ablated.any()):
            continue
        cos, sin = rotations[layer]
        swap = ablated[:, :, None, :] & affected[:, None]  # [batch, head, q_edited, n_image]
        k_base = baseline.k[layer][None].expand(inputs.batch_size, -1, -1, -1)
        k_base = model.family.rotate_keys(
            layer, k_base, gather_positions(cos, image, 1), gather_positions(sin, image, 1)
        )
        edit = _swap_image_kv(model, layer, image, swap, k_base, baseline.v[layer])
        state = _Recompute(model, layer, cos, sin, key_ok, first, edit)
        hooks += state.hooks()
    return hooks


def _swap_image_kv(
    model: HookedLVLM,
    layer: int,
    image: Int[Tensor, "batch n_image"],
    swap: Bool[Tensor, "batch head q_edited n_image"],
    k_base: Float[Tensor, "batch n_kv_heads n_image d_head"],
    v_base: Float[Tensor, "n_kv_heads n_image d_head"],
) -> Callable:
    """The edit of :class:`_Recompute` that puts the baseline K/V at the swapped image columns."""

    def edit(scores: Tensor, q: Tensor, v: Tensor, hook):
        group = q.shape[1] // k_base.shape[1]
        base = torch.matmul(q, k_base.repeat_interleave(group, 1).transpose(-1, -2))
        base = base * model.family.attention_scaling(layer)  # [batch, head, q_edited, n_image]
        cols = image[:, None, None, :].expand_as(swap)
        scores = scores.scatter(-1, cols, torch.where(swap, base, scores.gather(-1, cols)))
        v_image = v.gather(2, image[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[-1]))
        delta = v_base.repeat_interleave(group, 0)[None] - v_image  # [batch, head, n_image, d]

        def output(probs: Tensor) -> Tensor:
            at_image = probs.gather(-1, cols) * swap
            return torch.matmul(probs, v) + torch.matmul(at_image, delta)

        return scores, output, swap.any(-1)

    return edit


def recomputed_knockout_hooks(model: HookedLVLM, knockout: Knockout) -> HookList:
    """Knockout hooks by recomputed attention: the blocked pairs get the dtype's minimum
    score (``knockout.mask_scores``), in the query rows (and heads) that have one."""
    inputs = knockout.inputs
    key_ok = _recomputable(model, inputs)
    rows = knockout.blocked.to(model.device).any(-1)[:, None]  # [batch, 1, q]
    if knockout.heads is not None:
        heads = torch.zeros(model.n_heads, dtype=torch.bool, device=model.device)
        heads[list(knockout.heads)] = True
        rows = rows & heads[None, :, None]
    else:
        rows = rows.expand(-1, model.n_heads, -1)

    def edit(scores: Tensor, q: Tensor, v: Tensor, hook):
        return knockout.mask_scores(scores, hook), lambda probs: torch.matmul(probs, v), rows

    rotations = _rotations(model, inputs)
    hooks: HookList = []
    for layer in knockout.layers:
        cos, sin = rotations[layer]
        hooks += _Recompute(model, layer, cos, sin, key_ok, 0, edit).hooks()
    return hooks
