"""``AblationEngine``: image-K/V head ablation for many masks on one sample, fast.

With scope ``"text"`` every mask leaves everything up to the end of the image
unchanged, so the engine

1. runs that prefix once and keeps its post-rotary keys and values
   (``[n_kv_heads, prefix, d_head]`` per layer, one copy for all masks);
2. runs only the text suffix (about 20 tokens for LLaVA-1.5, against about 620
   for the whole prompt) for a batch of masks, through the Hugging Face decoder
   with a custom attention function (``transformers.AttentionInterface``,
   registered as :data:`ATTENTION_NAME` when an engine first runs) that scores
   each suffix query against the shared prefix and picks clean or baseline image
   K/V per (mask, layer, query head), or per image position too.

The shared prefix is never copied per mask: the attention function folds
(mask, query head in group, query) into the rows of one matrix per KV head, so
``[n_kv, rows, d] @ [n_kv, d, prefix]`` is a single batched matmul against the
batch-1 prefix. The prefix is stored twice side by side, clean and with the
baseline at the image columns (``[..., 2 * d_head]``); with per-head masks a row
``[q * keep, q * ~keep]`` then scores exactly the keys its head should see in
that one matmul, and reads the matching half of ``probs @ [V_clean | V_base]``.
Per-image-position masks use the hook reference's two edits instead (pick the
baseline score per column, add ``probs[image] @ (V_base - V_clean)``).

That eager path does twice the prefix work of a forward (a ``2 * d_head`` wide
product) and materialises ``[rows, prefix + suffix]`` scores. Bool per-head masks
take a fused path by default (``attention="fused"``, :func:`_fused_attention`): per
KV head the rows are sorted into kept and ablated, each set attends to its own
prefix half in one fused kernel call (CPU flash attention, CUDA FlashAttention or
memory-efficient attention) that also returns each row's log-sum-exp, and the
causal suffix part is merged in by log-sum-exp. Two layers do less on that path:

- The first decoder layer's input is the suffix's token embeddings, the same for
  every mask, so each head's attention output is one of two vectors (clean or
  baseline prefix), and the attention module's output, affine in them, is
  ``base + keep @ delta`` (:class:`FirstLayerBasis`, measured once per sample from
  ``n_heads + 1`` masks). A stand-in module (:class:`FirstLayerAttention`) returns it,
  so no mask's batch computes layer 0's queries, keys, values or attention. Not
  where a later layer reads layer 0's keys and values (K/V sharing), nor in 16-bit
  models (:attr:`AblationEngine.skips_first_layer`).
- The metric reads the final position only, and the last layer's outputs elsewhere
  feed nothing, so that layer attends from the final query alone (its keys and
  values still come from every suffix position).

Gates (gradients) and per-position masks stay on the eager path.

Why the original modules are swapped back. The TransformerLens bridge replaces
the HF model's submodules in place (``layers[i]`` is a ``BlockBridge``,
``layers[i].self_attn`` a ``PositionEmbeddingsAttentionBridge`` that reimplements
attention and never calls the HF attention function). While the engine runs, it
puts every wrapped module's ``original_component`` back into the HF module tree
and selects its attention function on the language model's config; both are
undone in a ``finally``, so the bridge, its hooks and other threads' view after
the call are as before (do not run the bridge concurrently with an engine call).
Hooks attached to the bridge therefore do not fire in the engine's scope-"text" runs.
Scope ``"all"`` changes the image tokens' own computation, so there is no prefix
to share: it falls back to batched forward passes through the hook reference.

Continuous gates (:meth:`AblationEngine.gate_gradients`). The per-head path also
takes a float gate ``g`` in [0, 1] per (mask, layer, query head) instead of a
bool: the row is scored with ``[q * g, q * (1 - g)] @ [K_clean; K_base]`` and reads
``g * P @ V_clean + (1 - g) * P @ V_base``, i.e. the head sees, at the image
positions only, ``K = g * K_clean + (1 - g) * K_base`` (post-rotary; rotation is
linear, so the same as interpolating before it) and ``V = g * V_clean + (1 - g) *
V_base``. At g in {0, 1} every term is the bool path's (``1 * x + 0 * y == x``).
Autograd through the suffix run then gives the normalized logit's gradient with
respect to all gates in one backward pass.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from attribution.own_checks import checks_own_arguments
from tl_lvlm.ablation.baseline import GeometryMeanBaseline, ImageKVBaseline, unpadded_image_span
from tl_lvlm.ablation.hooks import check_keep, image_kv_ablation_hooks
from tl_lvlm.ablation.metric import Metric, MetricSpec
from tl_lvlm.ablation.normalization import LogitNormalization
from tl_lvlm.ablation.scope import Scope, check_scope
from tl_lvlm.inputs import LVLMInputs

if TYPE_CHECKING:
    from tl_lvlm.model import HookedLVLM

#: Default largest batch on CPU, fused path: the fastest measured
#: (``benchmarks/ablation_throughput.py``'s batch sweep: 512 a few percent above 256 and
#: 5-10 % above 128; the fixed cost per batch, layer 0 and the routing, is spread wider).
CPU_MAX_BATCH = 512
#: ... and on the eager paths, whose ``[rows, prefix + suffix]`` scores outgrow the cache
#: and, above 32 masks, glibc's largest heap-served chunk (32 MiB), so they are mmapped
#: and page-faulted anew on every use (measured: about 1,050 minor faults per mask).
CPU_MAX_BATCH_EAGER = 32
#: A multiple of every CPU vector width (and unroll) of fp32 elementwise kernels (:func:`_merge`).
_VECTOR_PAD = 64
#: Query rows of a fused prefix call are padded to a multiple of this (:func:`_fused_attention`).
_ROW_PAD = 8
#: Fewest rows the final-position MLP multiplies (:class:`FinalPositionMLP`): BLAS takes
#: small-matrix kernels below about 6 rows (measured: MKL), which round differently, so a
#: mask's logit would change with its batch.
_MIN_GEMM_ROWS = 8
#: Name of the engine's attention function in ``transformers.AttentionInterface``.
ATTENTION_NAME = "tl_lvlm_image_ablation"
#: Keyword argument that carries the engine's state down to the attention function.
STATE_KWARG = "tl_lvlm_ablation"

Masks = Bool[Tensor, "n_masks n_layers n_heads"] | Bool[Tensor, "n_masks n_layers n_heads n_image"]
Gates = Float[Tensor, "n_masks n_layers n_heads"]


@dataclass
class SharedPrefix:
    """The prefix's keys and values, computed once per sample and shared by all masks.

    Post-rotary, with two variants side by side along the last axis:
    ``[..., :d_head]`` is the clean prefix, ``[..., d_head:]`` the prefix with the
    baseline at the image columns (baseline keys rotated to the image positions).
    """

    k: Float[Tensor, "n_layers n_kv_heads prefix two_d_head"]
    v: Float[Tensor, "n_layers n_kv_heads prefix two_d_head"]
    #: The image columns: a slice of the span, or the image tokens' positions ``[n_image]``
    #: where the family interleaves them with markers (``LVLMFamily.interleaved_image``).
    image: slice | Int[Tensor, " n_image"]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` without waiting for it: host tensors bound for CUDA go through
    pinned memory, so the copy is queued behind the running kernels instead of syncing."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclass
class Routing:
    """Which key/value set each suffix query row of the fused path reads, and where it goes.

    Per layer, the query rows (``[batch * suffix * n_heads]``: the attention function's
    ``[batch, n_heads, suffix, d_head]`` queries in the memory order HF's ``transpose(1,
    2)`` of the projections leaves them, which the fused kernels write too) are gathered into
    segments, one per (KV head, kept or ablated), each padded to a multiple of
    :data:`_ROW_PAD` rows: ``gather[l]`` lists the source row of each segment row (pad
    rows repeat row 0; their outputs are never read), ``segments[l]`` the
    ``(kv_head, ablated, start, length)`` of the non-empty segments, and
    ``inverse[l]`` where each source row's output lies in the segments. Layer 0 has
    no routing (its rows are the same for every mask; :func:`_fused_attention`).
    Computed on the host from the host-side masks, so the row counts that size the
    kernels' inputs never need a device sync.
    """

    gather: list[Int[Tensor, " _"] | None]  # [segment rows] per layer
    inverse: list[Int[Tensor, " _"] | None]  # [batch * suffix * n_heads] per layer
    segments: list[list[tuple[int, bool, int, int]]]

    @classmethod
    def of(
        cls, keep: Bool[Tensor, "n_layers batch n_heads"], n_kv: int, suffix: int, device
    ) -> Routing:
        """The routing of per-head bool masks ``keep`` (host) for ``suffix`` queries per head.

        The last layer routes the final query only (``suffix`` = 1 there): the metric reads
        the final position alone, and the last layer's other outputs feed nothing.
        """
        n_layers, b, n_heads = keep.shape
        g = n_heads // n_kv
        # Units of KV head kv in (mask, query head in group) order.
        heads = (
            keep.reshape(n_layers, b, n_kv, g).permute(0, 2, 1, 3).reshape(n_layers, n_kv, b * g)
        )
        move = functools.partial(to_device, device=torch.device(device))
        gather, inverse, segments = [None], [None], [[]]
        for layer in range(1, n_layers):
            queries = suffix if layer < n_layers - 1 else 1
            layer_gather, layer_inverse, layer_segments = cls._layer(heads[layer], n_heads, queries)
            gather.append(move(layer_gather))
            inverse.append(move(layer_inverse))
            segments.append(layer_segments)
        return cls(gather, inverse, segments)

    @staticmethod
    def _layer(
        kept: Bool[Tensor, "n_kv units"], n_heads: int, queries: int
    ) -> tuple[Int[Tensor, " _"], Int[Tensor, " _"], list[tuple[int, bool, int, int]]]:
        """One layer's gather, inverse and segments for ``queries`` query rows per unit."""
        n_kv, n_units = kept.shape
        g = n_heads // n_kv
        # The first query's row of unit (mask, query head in group) of each KV head.
        units, kv_heads = torch.arange(n_units), torch.arange(n_kv)[:, None]
        unit_rows = units // g * queries * n_heads + units % g + g * kv_heads
        n_rows = n_units * queries  # per KV head
        positions = torch.arange(n_rows)
        # Rows sorted kept-first.
        order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)
        source = torch.gather(unit_rows, 1, order)[..., None] + n_heads * torch.arange(queries)
        source = source.reshape(n_kv, -1)
        n_keep = (kept.sum(-1) * queries).tolist()
        seg_starts, segments, start = [], [], 0
        for kv, n in enumerate(n_keep):
            for ablated, length in ((False, n), (True, n_rows - n)):
                seg_starts.append(start)
                padded = length + -length % _ROW_PAD
                if length:
                    segments.append((kv, ablated, start, padded))
                start += padded
        kept_start, ablated_start = torch.tensor(seg_starts).view(n_kv, 2, 1).unbind(1)
        n_kept = torch.tensor(n_keep)[:, None]
        dest = torch.where(
            positions < n_kept, kept_start + positions, ablated_start + positions - n_kept
        )
        gather = torch.zeros(start, dtype=torch.int64)
        gather[dest.reshape(-1)] = source.reshape(-1)
        inverse = torch.empty(n_units * n_kv * queries, dtype=torch.int64)
        inverse[source.reshape(-1)] = dest.reshape(-1)
        return gather, inverse, segments


@dataclass
class SuffixState:
    """Passed as ``tl_lvlm_ablation=`` through the HF forward to :func:`image_ablation_attention`.

    ``keep`` is laid out for the attention function: ``[n_layers, n_kv_heads,
    batch, group, 1, n_image or 1]`` (query head ``h = kv * group + g``); bool masks,
    or float gates in [0, 1] per head (last axis 1; module docstring). ``routing``
    (bool per-head masks on the fused path) selects :func:`_fused_attention`.
    """

    prefix: SharedPrefix
    keep: (
        Bool[Tensor, "n_layers n_kv_heads batch group 1 n_image_or_1"]
        | Float[Tensor, "n_layers n_kv_heads batch group 1 1"]
    )
    routing: Routing | None = None
    first_layer: FirstLayerBasis | None = None


@dataclass
class FirstLayerBasis:
    """Layer 0's attention-module output per mask, from one sample's basis (fused path).

    Layer 0's input is the suffix's token embeddings, the same for every mask, so each
    head's attention output is one of two vectors (clean or baseline prefix), and the
    module's output (``o_proj`` of their concatenation: affine in it) is
    ``base + keep @ delta`` for a mask's layer-0 ``keep`` ``[n_heads]`` in {0, 1}:
    ``base`` is the output with every head ablated, ``delta[h]`` what keeping head h adds.
    """

    base: Float[Tensor, " suffix_d_model"]  # fp32
    delta: Float[Tensor, "n_heads suffix_d_model"]  # fp32
    shape: tuple[int, int]  # (suffix, d_model)

    @staticmethod
    def masks(n_layers: int, n_heads: int) -> Bool[Tensor, "n_basis n_layers n_heads"]:
        """The masks whose layer-0 outputs make the basis: none kept, then each head alone."""
        keep = torch.ones(n_heads + 1, n_layers, n_heads, dtype=torch.bool)
        keep[0, 0] = False
        keep[1:, 0] = torch.eye(n_heads, dtype=torch.bool)
        return keep

    @classmethod
    def of(cls, outputs: Float[Tensor, "n_basis suffix d_model"]) -> FirstLayerBasis:
        """From the layer-0 attention outputs of :meth:`masks`."""
        flat = outputs.float().flatten(1)
        return cls(flat[0], flat[1:] - flat[0], tuple(outputs.shape[1:]))

    def outputs(self, keep: Bool[Tensor, "batch n_heads"], dtype: torch.dtype):
        """``[batch, suffix, d_model]`` layer-0 attention outputs of masks ``keep``.

        A sum over heads in a fixed order, not a matrix product: BLAS blocks the latter by
        the number of rows, so a mask's output would round differently with its batch.
        Each step adds ``delta[h]`` or exactly zero.
        """
        keep = keep.to(self.delta.dtype)
        out = self.base.expand(keep.shape[0], -1).clone()
        for head, delta in enumerate(self.delta):
            out.addcmul_(keep[:, head, None], delta)
        return out.view(keep.shape[0], *self.shape).to(dtype)


class FirstLayerAttention(torch.nn.Module):
    """Stands in for layer 0's attention module while the engine runs: on the fused path
    (a state with a :class:`FirstLayerBasis`) it returns the basis's outputs instead of
    computing queries, keys, values and attention for every mask; otherwise the module's."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.original = original

    # Opaque to dynamo (compile_layers): the basis and masks change with every call.
    @torch.compiler.disable
    def forward(self, *args, **kwargs):
        state: SuffixState | None = kwargs.get(STATE_KWARG)
        if state is None or state.first_layer is None:
            return self.original(*args, **kwargs)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        keep = state.keep[0]  # [n_kv, b, g, 1, 1]
        keep = keep.transpose(0, 1).reshape(keep.shape[1], -1)
        return state.first_layer.outputs(keep, hidden.dtype), None


class FinalPositionMLP(torch.nn.Module):
    """Stands in for the last layer's MLP in the suffix runs: the MLP of the final position
    only. The metric reads nothing else of the last layer's output, and the layer's
    residual sum broadcasts the ``[batch, 1, d_model]`` result over the positions."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.original = original

    def forward(self, hidden_states: Tensor, *args, **kwargs):  # [batch, suffix, d_model]
        final = hidden_states[:, -1:]
        b = final.shape[0]
        if b < _MIN_GEMM_ROWS:  # zero rows, whose outputs are dropped
            final = torch.cat([final, final.new_zeros(_MIN_GEMM_ROWS - b, *final.shape[1:])])
        return self.original(final, *args, **kwargs)[:b]


def _kept_on(module: torch.nn.Module, key: str, make: Callable[[], object]) -> object:
    """``make()``'s result, made once per ``module`` and ``key`` and kept on the module.

    Kept in the module's ``__dict__``, not as a submodule (so it is in no parameter list
    or state dict), it goes away with the model, and compiled layers see the same object
    on every run (a new one would fail dynamo's guards and recompile).
    """
    kept = module.__dict__.setdefault("_tl_lvlm_kept", {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _stand_in(kind: type[torch.nn.Module], module: torch.nn.Module) -> torch.nn.Module:
    """The stand-in of ``kind`` for ``module``, one per module."""
    return _kept_on(module, kind.__name__, lambda: kind(module))


@contextlib.contextmanager
def _swapped(slot: tuple[torch.nn.Module, str], kind: type[torch.nn.Module]) -> Iterator[None]:
    """A ``kind`` stand-in in ``slot`` (block, attribute), the original back on exit."""
    block, name = slot
    original = getattr(block, name)
    setattr(block, name, _stand_in(kind, original))
    try:
        yield
    finally:
        setattr(block, name, original)


def _attention_with_lse(
    query: Float[Tensor, "batch heads queries d_head"],
    key: Float[Tensor, "batch heads keys d_head"],
    value: Float[Tensor, "batch heads keys d_head"],
    scale: float,
    causal: bool,
) -> tuple[Float[Tensor, "batch heads queries d_head"], Float[Tensor, "batch heads queries"]]:
    """Softmax attention and the fp32 log-sum-exp of each query's scores, fused where possible.

    The log-sum-exp lets two attentions over disjoint key sets be merged exactly
    (:func:`_merge`), so the prefix and the suffix never share a materialised
    ``[rows, prefix + suffix]`` score tensor. CPU: PyTorch's flash kernel; CUDA:
    FlashAttention for fp16/bf16 with ``d_head <= 256``, memory-efficient attention
    otherwise; any other device: the same computation unfused. ``causal`` aligns the
    query and key sequences at their start (query i sees keys 0..i).
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, scale=scale
        )
    if query.device.type == "cuda":
        if query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
            out = torch.ops.aten._scaled_dot_product_flash_attention(
                query, key, value, 0.0, causal, False, scale=scale
            )
            return out[0], out[1]
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, 0.0, causal, scale=scale
        )[:2]
        return out, lse[..., : query.shape[-2]]  # the kernel pads the lse's query axis
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    if causal:
        n_q, n_k = scores.shape[-2:]
        blocked = torch.ones(n_q, n_k, dtype=torch.bool, device=query.device).triu(1)
        scores.masked_fill_(blocked, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse[..., None]).to(value.dtype)
    return torch.matmul(probs, value), lse


def _merge(
    out_a: Float[Tensor, "*rows d_head"],
    lse_a: Float[Tensor, "*rows"],
    out_b: Float[Tensor, "*rows d_head"],
    lse_b: Float[Tensor, "*rows"],
) -> Float[Tensor, "*rows d_head"]:
    """Attention over the union of two disjoint key sets from each set's output and lse (fp32).

    ``softmax`` over both sets weighs set a's normalised output by
    ``exp(lse_a) / (exp(lse_a) + exp(lse_b))``, i.e. ``sigmoid(lse_a - lse_b)``.

    The sigmoid runs on a buffer padded to a multiple of :data:`_VECTOR_PAD` elements:
    CPU kernels compute the elements of a ragged tail with a scalar ``exp`` that rounds
    differently from the vectorized one, so otherwise a mask's logit would change (by
    about 1e-7) with how many masks share its batch. Padded, every element takes the
    vectorized path, and a mask's result does not depend on its batch. The rest is exact
    IEEE subtraction, product and sum, the same on either path (``torch.lerp`` is not: its
    vectorized kernel fuses a multiply-add that its scalar tail rounds twice).
    """
    diff = (lse_a - lse_b).reshape(-1)
    diff = torch.nn.functional.pad(diff, (0, -diff.numel() % _VECTOR_PAD))
    w_a = torch.sigmoid(diff)[: lse_a.numel()].view(*lse_a.shape, 1)
    out_b = out_b.float()
    return (out_a.float() - out_b).mul_(w_a).add_(out_b)


def _fused_attention(
    query: Float[Tensor, "batch n_heads suffix d_head"],
    key: Float[Tensor, "batch n_kv_heads suffix d_head"],
    value: Float[Tensor, "batch n_kv_heads suffix d_head"],
    scaling: float,
    prefix: SharedPrefix,
    layer: int,
    keep: Bool[Tensor, "n_kv_heads batch group 1 1"],
    routing: Routing,
) -> Float[Tensor, "batch suffix n_heads d_head"]:
    """Bool per-head masks without the eager path's doubled prefix work or score tensors.

    The query rows of each (KV head, kept or ablated) segment (:class:`Routing`) attend
    to the clean or the baseline prefix in one fused call against the batch-1 prefix.
    The suffix part (causal, per mask) is a second fused call, merged with the prefix
    part by log-sum-exp (:func:`_merge`). Layer 0 sees the suffix's input ids, the same
    for every mask, so there each head's output is computed once against each prefix and
    picked per mask (the masks' batches skip it: :class:`FirstLayerBasis`). The last
    layer computes the final query's output only and leaves zeros elsewhere.
    """
    b, n_heads, s, d = query.shape
    k2, v2 = prefix.k[layer], prefix.v[layer]  # [n_kv, prefix, 2 * d]
    n_kv = k2.shape[0]
    g = n_heads // n_kv
    halves = (slice(0, d), slice(d, None))  # clean, baseline
    if layer == 0:
        query, key, value = query[:1], key[:1], value[:1]
    if g > 1:
        key, value = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
    if layer == 0:
        out_s, lse_s = _attention_with_lse(query, key, value, scaling, causal=True)
        q = query.reshape(1, n_kv, g * s, d)
        out_s, lse_s = out_s.reshape(1, n_kv, g * s, d), lse_s.reshape(1, n_kv, g * s)
        clean, base = (
            _merge(*_attention_with_lse(q, k2[None, ..., h], v2[None, ..., h], scaling, False),
                   out_s, lse_s).view(n_heads, s, d).transpose(0, 1)
            for h in halves
        )  # fmt: skip
        picked = keep.permute(1, 3, 0, 2, 4).reshape(b, 1, n_heads, 1)
        return torch.where(picked, clean, base).to(query.dtype)
    # The last layer's outputs feed only the final position's logits (:meth:`Routing.of`).
    last = layer == prefix.k.shape[0] - 1
    if last:
        query = query[:, :, -1:]
    q_len = query.shape[2]
    # A view for HF's query layout (a copy for any other).
    rows = query.transpose(1, 2).reshape(-1, d).index_select(0, routing.gather[layer])
    out = rows.new_empty(rows.shape)
    lse = rows.new_empty(rows.shape[0], dtype=torch.float32)
    for kv, ablated, start, length in routing.segments[layer]:
        h = halves[ablated]
        o, part_lse = _attention_with_lse(
            rows[None, None, start : start + length], k2[None, None, kv, :, h],
            v2[None, None, kv, :, h], scaling, causal=False,
        )  # fmt: skip
        out[start : start + length], lse[start : start + length] = o[0, 0], part_lse[0, 0]
    inverse = routing.inverse[layer]
    out = out.index_select(0, inverse).view(b, q_len, n_heads, d)
    lse = lse.index_select(0, inverse).view(b, q_len, n_heads)
    # The final query sees every suffix key: causal alignment only with the whole suffix.
    out_s, lse_s = _attention_with_lse(query, key, value, scaling, causal=not last)
    merged = _merge(out, lse, out_s.transpose(1, 2), lse_s.transpose(1, 2)).to(query.dtype)
    if not last:
        return merged
    # Zeros at the positions whose outputs nothing reads.
    full = merged.new_zeros(b, s, n_heads, d)
    full[:, -1:] = merged
    return full


def image_ablation_attention(
    module: torch.nn.Module,
    query: Float[Tensor, "batch n_heads suffix d_head"],
    key: Float[Tensor, "batch n_kv_heads suffix d_head"],
    value: Float[Tensor, "batch n_kv_heads suffix d_head"],
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Float[Tensor, "batch suffix n_heads d_head"], None]:
    """Suffix attention over a shared prefix with image K/V ablated per mask and head.

    Follows HF's eager attention (softmax in fp32, causal among the suffix);
    ``attention_mask`` is ignored because the engine's rows are unpadded. The
    (mask, query head in group, query) triples are the rows of one matrix per KV
    head, multiplied by the batch-1 prefix in a single matmul.

    Per-head masks: row r is scored with ``[q * keep_r, q * ~keep_r] @ [K_clean;
    K_base]`` and reads ``P @ [V_clean | V_base]`` on the side it keeps, so it sees
    exactly one of the two key/value sets without a per-mask copy of either.
    Per-position masks score the image columns against both sets and pick per
    column; ablated columns add ``P[image] @ (V_base - V_clean)``.
    Float per-head gates ``g`` score with ``[q * g, q * (1 - g)]`` and read
    ``g * P @ V_clean + (1 - g) * P @ V_base`` (differentiable in ``g``).

    Returns ``(output [batch, suffix, n_heads, d_head], None)``.
    """
    state: SuffixState | None = kwargs.get(STATE_KWARG)
    if state is None:
        raise RuntimeError(
            f"attention implementation {ATTENTION_NAME!r} only runs inside AblationEngine; "
            "set the model back to 'eager'"
        )
    prefix, layer = state.prefix, module.layer_idx
    if state.routing is not None:
        keep = state.keep[layer]
        return (
            _fused_attention(query, key, value, scaling, prefix, layer, keep, state.routing),
            None,
        )
    k2, v2 = prefix.k[layer], prefix.v[layer]  # [n_kv, prefix, 2 * d]
    image = prefix.image
    b, n_heads, s, d = query.shape
    n_kv, n_prefix = k2.shape[:2]
    g, n_rows = n_heads // n_kv, b * n_heads // n_kv * s
    keep = state.keep[layer]  # [n_kv, b, g, 1, n_image or 1]
    per_head = keep.shape[-1] == 1

    # Scaling q rather than the scores saves a pass over the largest tensor.
    q = (query * scaling).view(b, n_kv, g, s, d).transpose(0, 1)  # [n_kv, b, g, s, d]
    if per_head:
        kept = keep.to(q.dtype)
        q2 = torch.cat([q * kept, q * (1 - kept)], -1).reshape(n_kv, n_rows, 2 * d)
        prefix_scores = torch.matmul(q2, k2.transpose(1, 2)).view(n_kv, b, g, s, n_prefix)
    else:
        rows = q.reshape(n_kv, n_rows, d)
        prefix_scores = torch.matmul(rows, k2[..., :d].transpose(1, 2))
        prefix_scores = prefix_scores.view(n_kv, b, g, s, n_prefix)
        base = torch.matmul(rows, k2[:, image, d:].transpose(1, 2)).view(n_kv, b, g, s, -1)
        # An index assignment, not copy_ into prefix_scores[..., image]: with a tensor of
        # image positions that indexing is a copy, not a view.
        prefix_scores[..., image] = torch.where(keep, prefix_scores[..., image], base)

    key_s, value_s = (t.transpose(0, 1)[:, :, None] for t in (key, value))  # [n_kv, b, 1, s, d]
    suffix_scores = torch.matmul(q, key_s.transpose(-1, -2))  # [n_kv, b, g, s, s]
    causal = torch.ones(s, s, dtype=torch.bool, device=query.device).triu(1)
    suffix_scores.masked_fill_(causal, torch.finfo(suffix_scores.dtype).min)

    probs = torch.softmax(torch.cat([prefix_scores, suffix_scores], -1), -1, dtype=torch.float32)
    probs = probs.to(query.dtype)
    p_prefix = probs[..., :n_prefix].reshape(n_kv, n_rows, n_prefix)
    if per_head:
        out2 = torch.matmul(p_prefix, v2).view(n_kv, b, g, s, 2 * d)
        if keep.dtype == torch.bool:
            out = torch.where(keep, out2[..., :d], out2[..., d:])
        else:  # gates: P @ (g * V_clean + (1 - g) * V_base) at the image columns
            out = kept * out2[..., :d] + (1 - kept) * out2[..., d:]
    else:
        out = torch.matmul(p_prefix, v2[..., :d]).view(n_kv, b, g, s, d)
        ablated = (probs[..., image] * ~keep).reshape(n_kv, n_rows, -1)
        delta = v2[:, image, d:] - v2[:, image, :d]
        out += torch.matmul(ablated, delta).view(n_kv, b, g, s, d)
    out = out + torch.matmul(probs[..., n_prefix:], value_s)
    return out.permute(1, 3, 0, 2, 4).reshape(b, s, n_heads, d), None


#: glibc's ``mallopt`` parameters (malloc.h) and the values the engine sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 1 * 2**30


@functools.cache
def steady_allocator() -> bool:
    """Fix glibc malloc's thresholds so the engine's speed does not depend on the process's past.

    Why. glibc serves a request of at least ``M_MMAP_THRESHOLD`` bytes with a fresh
    ``mmap`` and unmaps it on free; the threshold starts at 128 KiB and only rises
    (up to 32 MiB) when such a chunk is freed, and the top of the heap is given back
    to the OS above ``M_TRIM_THRESHOLD``. So whether a forward's multi-MB activations
    are recycled from the heap or re-faulted page by page (measured: about 1,050 minor
    page faults and 2x slower per mask) depends on what the process allocated and
    freed before. Setting both thresholds fixes the fast state for the whole process,
    without an environment variable: chunks up to 32 MiB come from the heap, and up to
    1 GiB of freed heap is kept for reuse instead of being returned to the OS.

    Linux with glibc only (a no-op elsewhere, e.g. macOS or musl); returns whether
    the thresholds were set. Done once per process, when the first engine is built.
    """
    import ctypes

    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # another libc under glibc's name
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting M_MMAP_THRESHOLD also turns off its dynamic rise.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


@functools.cache
def register_attention() -> None:
    """Register :func:`image_ablation_attention` with transformers as :data:`ATTENTION_NAME`.

    Done when an engine first runs, not at import: importing tl_lvlm changes nothing
    in transformers.
    """
    from transformers import AttentionInterface

    # Dynamo never traces it (compile_layers compiles the layers around it): its kernel
    # calls and row counts change with every batch.
    AttentionInterface.register(ATTENTION_NAME, torch.compiler.disable(image_ablation_attention))


@contextlib.contextmanager
def hf_modules(model: HookedLVLM, attn_implementation: str | None = None) -> Iterator[None]:
    """Run the HF model with its original modules instead of the bridge's wrappers.

    Puts each bridge component's ``original_component`` back where the bridge
    put the component, and optionally selects ``attn_implementation`` on the
    language model's config; restores both on exit.
    """
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    undo: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []

    def unwrap(module: torch.nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, GeneralizedComponent):
                undo.append((module, name, child))
                child = child.original_component
                setattr(module, name, child)
            unwrap(child)

    if attn_implementation == ATTENTION_NAME:
        register_attention()
    decoder_config = model.family.decoder_config
    attn_before = decoder_config._attn_implementation
    try:
        unwrap(model.hf_model)
        if attn_implementation is not None:
            decoder_config._attn_implementation = attn_implementation
        yield
    finally:
        decoder_config._attn_implementation = attn_before
        for module, name, child in reversed(undo):
            setattr(module, name, child)


def _compiled(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    """``torch.compile(module)``, once per module and backend (reused across engines).

    ``dynamic=True``: the suffix's row count changes with the batch size.
    """
    make = functools.partial(torch.compile, module, backend=backend, dynamic=True)
    return _kept_on(module, f"compiled:{backend}", make)


class AblationEngine:
    """The metric (target logits) of one sample under many image-K/V head-ablation masks.

    Args:
        model: the model.
        sample: one prompt (``inputs[i]`` of a prepared batch; left padding is dropped).
        baseline: from :func:`~tl_lvlm.ablation.resolve_baseline` (or
            :func:`~tl_lvlm.ablation.image_kv_baseline`): its ``for_inputs`` fits the sample.
        target: token id whose logit is reported; None = the clean greedy answer's first token.
        metric: what is reported of the final-position logits
            (:mod:`tl_lvlm.ablation.metric`): ``"logit"`` (the target's), ``"logit_diff"``
            (target minus ``foil``), ``"logprob"``, or a callable ``[batch, vocab] ->
            [batch]`` on the fp32 logits.
        foil: token id subtracted by ``metric="logit_diff"`` (only then).
        scope: ``"text"`` (shared prefix, fast) or ``"all"`` (batched hooked forwards).
        attention: scope "text" with bool per-head masks: ``"fused"`` (fused attention
            kernels merged by log-sum-exp, :func:`_fused_attention`) or ``"eager"`` (the
            ``[q * keep, q * ~keep]`` matmuls). Per-position masks and
            :meth:`gate_gradients` always take the eager path.
        compile_layers: ``torch.compile`` each decoder layer for the suffix runs (norms,
            projections, rotary embedding, MLP; the engine's attention function is a graph
            break: its row counts change with every batch); True = the default backend
            ("inductor"), or a backend's name. The first batch pays the compilation.

    Attributes:
        target: the target token id.
        clean_logit: the target's logit at the final position of the clean run
            (``model(sample)``; with scope ``"text"`` through the HF modules, like the
            masked runs, in the same forward that caches the prefix); ``run`` on the
            all-kept mask reproduces it.
        clean_logits: ``[d_vocab]`` fp32 final-position logits of the clean run.
        metric: the resolved :class:`~tl_lvlm.ablation.metric.Metric`.
        foil: the foil token id, or None.
        clean_value: the metric of the clean run (``clean_logit`` for ``"logit"``).
    """

    @checks_own_arguments
    def __init__(
        self,
        model: HookedLVLM,
        sample: LVLMInputs,
        baseline: ImageKVBaseline | GeometryMeanBaseline,
        *,
        target: int | None = None,
        metric: MetricSpec | Metric = "logit",
        foil: int | None = None,
        scope: Scope = "text",
        attention: Literal["fused", "eager"] = "fused",
        compile_layers: bool | str = False,
    ):
        check_scope(scope)
        metric = Metric.resolve(metric)
        metric.check_foil(foil)
        if attention not in ("fused", "eager"):
            raise ValueError(f"attention must be 'fused' or 'eager', got {attention!r}")
        steady_allocator()
        if not isinstance(sample, LVLMInputs) or sample.batch_size != 1:
            got = sample.batch_size if isinstance(sample, LVLMInputs) else type(sample).__name__
            raise ValueError(
                f"AblationEngine runs one sample: pass a single-row LVLMInputs such as "
                f"inputs[i], got {got}"
            )
        model.family.require("ablation")
        unpadded_image_span(sample)  # rejects a sample without image tokens
        # The baseline at this sample's image geometry (a zero or per-geometry mean fits any).
        baseline = baseline.for_inputs(model, sample)
        self.model = model
        self.scope = scope
        self.attention = attention
        self.compile_layers = "inductor" if compile_layers is True else compile_layers or None
        self.dtype = model.hf_model.dtype
        self.device = model.device
        self.sample = sample.to(self.device)
        self.baseline = baseline.to(self.device, self.dtype)
        self._pad = self.sample.padding(0)
        self._ids = self.sample.input_ids[:, self._pad :]  # [1, seq]
        #: Position ids of the unpadded prompt, ``[..., 1, seq]`` (the family's layout).
        self._positions = model.family.position_ids(self.sample)[..., self._pad :]
        self.image_start, self.prefix_len = baseline.image_span
        self.suffix_len = self._ids.shape[1] - self.prefix_len
        if scope == "text":
            self._check_suffix_attention()
            # The clean run takes the masked runs' path (HF modules) and leaves the prefix's
            # keys and values in its cache: one forward for both.
            self.clean_logits, self.prefix = self._clean_run()
        else:
            with torch.no_grad():
                self.clean_logits = model.final_logits(self.sample)[0].cpu()
            self.prefix = None
        vocab = self.clean_logits.shape[0]
        if target is None:
            target = int(self.clean_logits.argmax())
        elif not 0 <= int(target) < vocab:
            raise ValueError(f"target must be a token id in [0, {vocab}), got {target}")
        self.target = int(target)
        if foil is not None and not 0 <= int(foil) < vocab:
            raise ValueError(f"foil must be a token id in [0, {vocab}), got {foil}")
        metric.check_foil(foil, self.target)
        self.metric = metric
        self.foil = None if foil is None else int(foil)
        self.clean_logit = float(self.clean_logits[self.target])
        self.clean_value = float(self._measure(self.clean_logits[None], None)[0])
        ids = metric.vocab(self.target, self.foil)
        #: Token ids whose logits the runs compute (None = all, reduced on the device).
        self._vocab = None if ids is None else torch.tensor(ids, device=self.device)

    def _check_suffix_attention(self) -> None:
        """Refuse what :func:`image_ablation_attention` does not implement (it never guesses)."""
        self.model.family.check_engine(self._ids.shape[1])

    @property
    def n_image(self) -> int:
        return self.baseline.n_image

    @torch.no_grad()
    def _clean_run(self) -> tuple[Float[Tensor, " d_vocab"], SharedPrefix]:
        """The unpadded prompt once through the HF modules: its fp32 final-position logits
        (host) and the prefix's keys and values, the baseline keys rotated to the image
        positions."""
        family = self.model.family
        with hf_modules(self.model):
            out = self.model.hf_model.model(
                input_ids=self._ids,
                position_ids=self._positions,
                use_cache=True,
                **family.prefix_inputs(self.sample, self._ids.shape[1]),
            )
        logits = family.final_logits(out.last_hidden_state[:, -1])[0].cpu()
        # A layer that shares K/V reads (and caches nothing but a placeholder for) another's.
        cache = [
            out.past_key_values.layers[family.kv_source(i)] for i in range(self.model.n_layers)
        ]
        n = self.prefix_len
        k = torch.stack([layer.keys[0, :, :n] for layer in cache])  # [n_layers, n_kv, prefix, d]
        v = torch.stack([layer.values[0, :, :n] for layer in cache])
        positions = self._positions[..., :n]
        image = slice(self.image_start, self.prefix_len)
        if self.prefix_len - self.image_start != self.n_image:  # interleaved with markers
            image = self.sample.positions("image", 0) - self._pad
        rotations = family.rotations(k, positions[..., image])
        k_base = torch.cat(
            [
                family.rotate_keys(layer, base, cos, sin)
                for layer, (base, (cos, sin)) in enumerate(
                    zip(self.baseline.k.split(1), rotations, strict=True)
                )
            ]
        )
        k_alt, v_alt = k.clone(), v.clone()
        k_alt[:, :, image], v_alt[:, :, image] = k_base, self.baseline.v
        return logits, SharedPrefix(torch.cat([k, k_alt], -1), torch.cat([v, v_alt], -1), image)

    def check_masks(self, masks: Tensor | np.ndarray) -> Masks:
        """Validate ``masks`` (as :func:`~tl_lvlm.ablation.check_keep`); return a bool tensor."""
        return check_keep(
            masks,
            n_rows=None,
            n_layers=self.model.n_layers,
            n_heads=self.model.n_heads,
            n_image=self.n_image,
            name="masks",
        )

    def run(
        self,
        masks: Tensor | np.ndarray,  # validated by check_masks, with the fix
        batch_size: int | None = None,
        *,
        return_logits: bool = False,
        progress: bool | None = None,
    ) -> (
        Float[Tensor, " n_masks"]
        | tuple[Float[Tensor, " n_masks"], Float[Tensor, "n_masks d_vocab"]]
    ):
        """The metric (by default the target logit) at the final position for every mask.

        Args:
            masks: ``[n_masks, n_layers, n_heads]`` bool, True = head kept; or
                ``[n_masks, n_layers, n_heads, n_image]`` per image position (an
                ``expand``-ed view costs no memory).
            batch_size: masks per forward pass; None chooses one from free memory
                (:meth:`auto_batch_size`).
            return_logits: also return the full final-position logits.
            progress: tqdm progress bar; None shows it on a terminal when there is
                more than one batch.

        Returns:
            fp32 CPU ``[n_masks]`` metric values, and ``[n_masks, d_vocab]`` logits
            with ``return_logits``. The metric is reduced per batch on the device: a
            full-vocabulary metric (``"logprob"``, callables) moves only its values.
        """
        masks = self.check_masks(masks)
        n = masks.shape[0]
        batch_size = batch_size or self.auto_batch_size(per_position=masks.ndim == 4)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        starts = range(0, n, batch_size)
        if progress is None:
            disable = True if len(starts) == 1 else None  # None: tqdm shows it on a terminal
        else:
            disable = not progress
        if self.scope == "text":
            run_batch, swapped = self._run_text, self._suffix_modules()
        else:
            run_batch, swapped = self._run_all, contextlib.nullcontext()
        vocab = None if return_logits else self._vocab
        # Batches stay on the device until the end: one host transfer (and sync) per call.
        values, logits = [], []
        with torch.inference_mode(), swapped, tqdm(total=n, unit="mask", disable=disable) as bar:
            for start in starts:
                keep = masks[start : start + batch_size]
                batch = run_batch(keep, vocab)
                values.append(self._measure(batch, vocab))
                if return_logits:
                    logits.append(batch)
                bar.update(keep.shape[0])
            values = torch.cat(values).cpu()
            if return_logits:
                logits = torch.cat(logits).cpu()
        # clone() outside inference mode: the caller gets ordinary tensors.
        if return_logits:
            return values.clone(), logits.clone()
        return values.clone()

    def _measure(
        self, logits: Float[Tensor, "batch n_vocab"], vocab: Int[Tensor, " n_vocab"] | None
    ) -> Float[Tensor, " batch"]:
        """The metric of logits over ``vocab`` (None = full-vocabulary logits)."""
        if vocab is None:
            return self.metric.of_logits(logits, self.target, self.foil)
        return self.metric.reduce(logits, self.target, self.foil)

    @functools.cached_property
    def normalization(self) -> LogitNormalization:
        """Clean and all-ablated metric values (one run of the all-ablated mask, cached)."""
        n_components = self.model.n_layers * self.model.n_heads

        def logits(masks: np.ndarray) -> np.ndarray:
            keep = torch.from_numpy(masks).reshape(-1, self.model.n_layers, self.model.n_heads)
            return self.run(keep, 1, progress=False).double().numpy()

        return LogitNormalization.measure(self.clean_value, logits, n_components)

    def check_gates(self, gates: Tensor | np.ndarray) -> Gates:
        """Validate gates ``[n, n_layers, n_heads]`` in [0, 1] (bool allowed); return fp32."""
        if isinstance(gates, np.ndarray):
            gates = torch.from_numpy(gates)
        if not isinstance(gates, Tensor) or not (
            gates.is_floating_point() or gates.dtype == torch.bool
        ):
            got = gates.dtype if isinstance(gates, Tensor) else type(gates).__name__
            raise TypeError(f"gates must be a float (or bool) tensor or numpy array, got {got}")
        want = (self.model.n_layers, self.model.n_heads)
        if gates.ndim != 3 or tuple(gates.shape[1:]) != want or gates.shape[0] == 0:
            raise ValueError(
                f"gates must have shape [batch, n_layers={want[0]}, n_heads={want[1]}] (one gate "
                f"per head; per-image-position gates are not supported), got {tuple(gates.shape)}"
            )
        gates = gates.float()
        if not bool(((gates >= 0) & (gates <= 1)).all()):
            raise ValueError("gates must lie in [0, 1] (1 = clean image K/V, 0 = baseline)")
        return gates

    def gate_gradients(
        self,
        gates: Tensor | np.ndarray,  # validated by check_gates, with the fix
        batch_size: int | None = None,
        *,
        normalization: LogitNormalization | None = None,
        progress: bool | None = None,
    ) -> tuple[Float[Tensor, " n_masks"], Float[Tensor, "n_masks n_layers n_heads"]]:
        """Normalized metric (target logit) and its gradient with respect to continuous head gates.

        Gate ``g`` of head (l, h) interpolates what that query head sees at the image
        positions (scope ``"text"``: text queries only):
        ``K = g * K_clean + (1 - g) * K_base`` (post-rotary) and
        ``V = g * V_clean + (1 - g) * V_base``; g = 1 is clean, g = 0 the baseline, and
        bool gates give exactly :meth:`run`'s masks. One forward and one backward pass
        of the suffix per batch.

        Args:
            gates: ``[n_masks, n_layers, n_heads]`` in [0, 1] (float or bool).
            batch_size: gate vectors per pass; None chooses one from free memory
                (:meth:`auto_batch_size` with ``backward=True``).
            normalization: clean and all-ablated logits defining
                ``y = (logit - ablated) / (clean - ablated)``; None = :attr:`normalization`.
            progress: tqdm progress bar, as in :meth:`run`.

        Returns:
            fp32 CPU ``y`` ``[n_masks]`` and ``dy/dgates`` ``[n_masks, n_layers, n_heads]``.

        Raises:
            ValueError: scope ``"all"`` (it has no shared-prefix suffix run to differentiate),
                gates of the wrong shape or outside [0, 1].
        """
        if self.scope != "text":
            raise ValueError(
                "gate gradients need scope='text' (they differentiate the engine's shared-prefix "
                f"suffix run); this engine has scope={self.scope!r}"
            )
        gates = self.check_gates(gates)
        norm = normalization or self.normalization
        n = gates.shape[0]
        batch_size = batch_size or self.auto_batch_size(backward=True)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        starts = range(0, n, batch_size)
        disable = (len(starts) == 1 or None) if progress is None else not progress
        ys, grads = [], []
        swapped = self._suffix_modules()
        with torch.enable_grad(), swapped, tqdm(total=n, unit="mask", disable=disable) as bar:
            for start in starts:
                g = gates[start : start + batch_size].to(self.device).requires_grad_()
                value = self._measure(self._run_text(g, self._vocab), self._vocab)
                if not value.requires_grad:
                    raise ValueError(
                        f"metric {self.metric.name} is not differentiable in the logits (its "
                        "values carry no gradient); gate gradients need a torch function of them"
                    )
                y = (value - norm.ablated) / norm.gap
                # Rows are independent, so d(sum y)/dg is each row's own gradient; autograd.grad
                # leaves the parameters' .grad untouched.
                (grad,) = torch.autograd.grad(y.sum(), g)
                ys.append(y.detach().cpu())
                grads.append(grad.float().cpu())
                bar.update(g.shape[0])
        return torch.cat(ys), torch.cat(grads)

    def auto_batch_size(
        self, max_batch: int | None = None, *, backward: bool = False, per_position: bool = False
    ) -> int:
        """Masks per forward pass that fit in free memory, at most ``max_batch``.

        Budget: half the free accelerator memory on CUDA, a quarter of the
        available RAM on CPU (2 GiB when ``psutil`` is missing), divided by an
        estimate of the activations one mask needs (:meth:`_bytes_per_mask`).
        ``max_batch`` defaults to 512 on CUDA and on CPU to :data:`CPU_MAX_BATCH` (fused
        path) or :data:`CPU_MAX_BATCH_EAGER` (eager paths), the fastest batches measured
        there (``benchmarks/ablation_throughput.py`` sweeps them).
        ``backward=True`` sizes a batch of :meth:`gate_gradients`, which keeps every
        layer's activations for the backward pass; ``per_position`` one of
        per-image-position masks (eager attention, scores materialised).
        """
        eager = backward or per_position or self.attention == "eager"
        if self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] // 2
            max_batch = max_batch or 512
        else:
            try:
                import psutil

                budget = psutil.virtual_memory().available // 4
            except ImportError:
                budget = 2 * 2**30
            max_batch = max_batch or (CPU_MAX_BATCH_EAGER if eager else CPU_MAX_BATCH)
        per_mask = self._bytes_per_mask(eager=eager) * (self.model.n_layers + 1 if backward else 1)
        return int(max(1, min(max_batch, budget // per_mask)))

    def _bytes_per_mask(self, *, eager: bool = True) -> int:
        """Rough upper estimate of the activation bytes one mask needs in a forward pass.

        Eager attention (scope "all", gates, per-position masks, ``attention="eager"``)
        is dominated by the scores ``[n_heads, queries, keys]`` (several copies, the
        softmax in fp32); the fused path keeps only ``[n_heads, queries, d_head]``
        queries and outputs (a few copies, the merge in fp32). Plus the MLP's
        ``[queries, d_mlp]`` and the logits; doubled for slack.
        """
        cfg = self.model.family.decoder_config
        item = torch.finfo(self.dtype).bits // 8
        n_heads, n_image = self.model.n_heads, self.n_image
        seq = self._ids.shape[1]
        queries = self.suffix_len if self.scope == "text" else seq
        if eager or self.scope == "all":
            scores = n_heads * queries * (seq + n_image) * (8 + 3 * item)
        else:
            scores = n_heads * queries * (self.model.d_head * (6 * item + 12) + 16)
        if self.scope == "all":  # the hook reference's [head, query, n_image] gathers
            scores += n_heads * queries * n_image * (4 * item + 1)
        hidden = queries * (3 * cfg.intermediate_size + 8 * cfg.hidden_size) * item
        return 2 * (scores + hidden + cfg.vocab_size * (item + 4))

    @contextlib.contextmanager
    def _suffix_modules(self) -> Iterator[None]:
        """HF modules, the engine's attention and stand-ins in place (:class:`FinalPositionMLP`,
        :class:`FirstLayerAttention`); layers compiled if ``compile_layers``."""
        family = self.model.family
        with contextlib.ExitStack() as stack:
            stack.enter_context(hf_modules(self.model, ATTENTION_NAME))
            stack.enter_context(
                _swapped(family.mlp_slot(self.model.n_layers - 1), FinalPositionMLP)
            )
            if self.skips_first_layer:
                stack.enter_context(_swapped(family.attention_slot(0), FirstLayerAttention))
            if not self.compile_layers:
                yield
                return
            layers = family.decoder.layers  # the HF layers while swapped
            originals = list(layers)
            try:
                for i, layer in enumerate(originals):
                    layers[i] = _compiled(layer, self.compile_layers)
                yield
            finally:
                for i, layer in enumerate(originals):
                    layers[i] = layer

    @functools.cached_property
    def skips_first_layer(self) -> bool:
        """Whether the fused path takes layer 0's attention from a :class:`FirstLayerBasis`.

        Not where a later layer reads layer 0's keys and values (K/V sharing), which only
        its module's forward provides; not in 16-bit models, where every basis output is
        rounded to the model's dtype and a mask's sum of deltas would carry the rounding of
        each kept head (several bf16 steps against the forward's one).
        """
        family = self.model.family
        return (
            self.attention == "fused"
            and torch.finfo(self.dtype).bits >= 32
            and all(family.kv_source(layer) != 0 for layer in range(1, self.model.n_layers))
        )

    @functools.cached_property
    def _first_layer_basis(self) -> FirstLayerBasis:
        """This sample's :class:`FirstLayerBasis`: layer 0's attention-module outputs of
        :meth:`FirstLayerBasis.masks`, in one fused batch (first read inside a suffix run)."""
        outputs = []
        module = self.model.family.attention(0)
        hook = module.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
        try:
            masks = FirstLayerBasis.masks(self.model.n_layers, self.model.n_heads)
            self._run_text(masks, self._vocab, first_layer=False)
        finally:
            hook.remove()
        return FirstLayerBasis.of(outputs[0])

    def _run_text(
        self,
        keep: Masks | Gates,
        vocab: Int[Tensor, " n_vocab"] | None = None,
        *,
        first_layer: bool = True,
    ) -> Float[Tensor, "batch n_vocab"]:
        """Final-position fp32 logits of the suffix run for one batch (HF modules in place).

        ``keep``: bool masks on the host or the device, or float gates; ``vocab``: the
        token ids whose logits are computed (None = all); ``first_layer``: on the fused
        path, take layer 0's attention from the sample's :class:`FirstLayerBasis`.
        """
        b, n_layers, n_heads = keep.shape[:3]
        n_kv = self.model.n_kv_heads
        per_position = keep.shape[3] if keep.ndim == 4 else 1
        layout = keep.reshape(b, n_layers, n_kv, n_heads // n_kv, 1, per_position)
        layout = layout.permute(1, 2, 0, 3, 4, 5)
        routing = None
        if self.attention == "fused" and keep.dtype == torch.bool and per_position == 1:
            # From the host copy of the masks: no device sync for the row counts.
            routing = Routing.of(keep.cpu().transpose(0, 1), n_kv, self.suffix_len, self.device)
        basis = None
        if routing is not None and first_layer and self.skips_first_layer:
            basis = self._first_layer_basis
        state = SuffixState(self.prefix, to_device(layout, self.device), routing, basis)
        family = self.model.family
        hidden = family.decoder(
            input_ids=self._ids[:, self.prefix_len :].expand(b, -1),
            position_ids=self._positions[..., self.prefix_len :],
            use_cache=False,
            **{STATE_KWARG: state},
        ).last_hidden_state
        return family.final_logits(hidden[:, -1], vocab)

    def _run_all(
        self, keep: Masks, vocab: Int[Tensor, " n_vocab"] | None = None
    ) -> Float[Tensor, "batch n_vocab"]:
        """Final-position logits of whole hooked forwards, the sample repeated per mask."""
        rows = self.sample[[0] * keep.shape[0]]
        keep = keep.to(self.device)
        hooks = image_kv_ablation_hooks(self.model, rows, self.baseline, keep, scope="all")
        return self.model.final_logits(rows, hooks, vocab)
