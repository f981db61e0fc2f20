"""Token-level information flow: attention knockout between token groups.

Attention knockout blocks chosen query positions from reading chosen key
positions in a window of layers, by setting their pre-softmax attention scores
(``blocks.{l}.attn.hook_attn_scores``) to the dtype's most negative value, the
same value Hugging Face uses for masked positions. Information can then still
reach a blocked query indirectly (through other tokens, or through layers
outside the window), but not along the blocked edge in those layers.

**Edge convention.** An edge is ``(source, destination)`` = ``(key group, query
group)``, written in the direction information flows: ``("question", "final")``
is the flow from question tokens to the final token, and knocking it out stops
final-token *queries* from attending to question *keys*. ``("image", "role")``
stops the role tokens from reading the image. Either end is a token group of
:data:`~tl_lvlm.inputs.GROUPS`, the alias ``"text"`` (question, role and final:
every token after the image), or a collection of these, e.g.
``("question", ("role", "final"))``.

Sweeping a knockout window over the layers (:func:`flow_sweep`) shows where in
depth an edge carries the information the answer needs (the paper's token-flow
analysis; :data:`PAPER_EDGE_SETS` holds its two experiments). The measure is the
relative target logit ``logit(knocked) / logit(clean)``, as the paper reports the
relative change of the answer's logit; the ``(knocked - ref) / (clean - ref)``
normalization of head attribution would need a reference run per edge set. With another
``metric=`` (:mod:`tl_lvlm.ablation.metric`) it is ``metric(knocked) / metric(clean)``,
except for ``"logprob"``, always negative, whose relative value is the probability ratio
``exp(logprob(knocked) - logprob(clean)) = p(knocked) / p(clean)`` (also 1 = unchanged,
0 = removed).

The hooks follow the family's :attr:`~tl_lvlm.families.LVLMFamily.attention_edits`:
``"scores"`` edits the scores, which needs an attention component that computes them
itself and lets hook edits flow into its softmax; ``"recompute"`` recomputes attention
from ``hook_q/k/v`` (:func:`~tl_lvlm.ablation.recomputed.recomputed_knockout_hooks`).
Where TransformerBridge keeps attention native and fires ``hook_attn_scores`` after the
fact, a score edit would be discarded: :func:`knockout` refuses such models
(``LVLMFamily.check_knockout``) rather than returning a silent no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from attribution.own_checks import checks_own_arguments
from tl_lvlm.ablation.metric import Metric, MetricSpec
from tl_lvlm.ablation.recomputed import recomputed_knockout_hooks
from tl_lvlm.analysis.heads.labels import answers_label
from tl_lvlm.analysis.heads.samples import Samples
from tl_lvlm.inputs import GROUPS, LVLMInputs
from tl_lvlm.model import HookedLVLM

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Shorthands accepted wherever a group name is: alias -> groups.
GROUP_ALIASES: dict[str, tuple[str, ...]] = {"text": ("question", "role", "final")}

GroupSpec = str | Collection[str]
"""A group name, an alias from :data:`GROUP_ALIASES`, or a collection of these."""

Edge = tuple[GroupSpec, GroupSpec]
"""``(source, destination)`` = ``(key group, query group)``: information flowing
from ``source`` tokens to ``destination`` tokens."""

#: The paper's two token-flow experiments, each a figure: edge-set name -> edges.
#: ``text_flow``: does the question's information reach the answer through the
#: role/final tokens or through the other question tokens? ``image_flow``: which
#: readers of the image carry the answer (all others are blocked from the image)?
PAPER_EDGE_SETS: dict[str, dict[str, list[Edge]]] = {
    "text_flow": {
        "question -> role, final": [("question", "role"), ("question", "final")],
        "question -> question": [("question", "question")],
    },
    "image_flow": {
        "image read by role, final only": [("image", "question")],
        "image read by question only": [("image", "role"), ("image", "final")],
        "image read by no text": [("image", "text")],
    },
}


def resolve_groups(spec: GroupSpec) -> tuple[str, ...]:
    """Group names of one edge end, aliases expanded, in prompt order."""
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names:
        raise ValueError("an edge end names no token group")
    out: set[str] = set()
    for name in names:
        if not isinstance(name, str) or (name not in GROUPS and name not in GROUP_ALIASES):
            raise ValueError(
                f"unknown token group {name!r}; expected one of {GROUPS} or an alias "
                f"{tuple(GROUP_ALIASES)}"
            )
        out.update(GROUP_ALIASES.get(name, (name,)))
    return tuple(g for g in GROUPS if g in out)


@checks_own_arguments
def _as_edge_list(edges: Edge | Sequence[Edge]) -> list[Edge]:
    # A bare edge ("question", "final") is a pair whose first item is a group name,
    # whereas the items of an edge list are pairs themselves.
    if isinstance(edges, tuple) and len(edges) == 2 and isinstance(edges[0], str):
        return [edges]
    edges = list(edges)
    for edge in edges:
        if isinstance(edge, str) or len(edge) != 2:
            raise ValueError(f"an edge is a (source, destination) pair, got {edge!r}")
    return edges


def _groups_mask(inputs: LVLMInputs, spec: GroupSpec) -> Bool[Tensor, "batch pos"]:
    """Positions of the groups of ``spec``; raises if they are empty in some row."""
    names = resolve_groups(spec)
    mask = torch.stack([inputs.group_mask(g) for g in names]).any(0)
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"token group {'+'.join(names)} is empty in batch row(s) {empty}: the prompt "
            "template has no such tokens, so an edge from or to it blocks nothing"
        )
    return mask


@checks_own_arguments
def knockout_mask(
    inputs: LVLMInputs, edges: Edge | Sequence[Edge]
) -> Bool[Tensor, "batch query key"]:
    """Which (query, key) pairs the edges block; True = blocked.

    Args:
        inputs: the batch the knockout is for (token groups per row).
        edges: ``(source, destination)`` = ``(key group, query group)`` pairs.
    """
    blocked = torch.zeros(
        inputs.batch_size,
        inputs.seq_len,
        inputs.seq_len,
        dtype=torch.bool,
        device=inputs.input_ids.device,
    )
    for source, destination in _as_edge_list(edges):
        keys = _groups_mask(inputs, source)
        queries = _groups_mask(inputs, destination)
        blocked |= queries[:, :, None] & keys[:, None, :]
    return blocked


def _check_rows_keep_a_key(inputs: LVLMInputs, blocked: Bool[Tensor, "batch query key"]) -> None:
    """Refuse knockouts that leave a real query with no key to attend to.

    Softmax over no keys is undefined: with the dtype-min fill it silently turns
    into uniform attention over *every* position, future tokens included.
    """
    n = inputs.seq_len
    causal = torch.ones(n, n, dtype=torch.bool, device=blocked.device).tril()
    visible = causal & inputs.attention_mask.bool()[:, None, :]
    stranded = blocked.any(-1) & ~(visible & ~blocked).any(-1)
    if stranded.any():
        row, pos = (int(i) for i in stranded.nonzero()[0])
        group = next(g for g in GROUPS if inputs.group_mask(g)[row, pos])
        raise ValueError(
            f"the edges block every key that position {pos} ({group} group, batch row {row}) "
            "can attend to, so its attention is undefined; leave at least one source group "
            "(e.g. the prefix) visible to it"
        )


def _check_layers(model: HookedLVLM, layers: int | Sequence[int] | None) -> tuple[int, ...]:
    n = model.n_layers
    if layers is None:
        return tuple(range(n))
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    if not layers:
        raise ValueError("the layer window is empty")
    outside = [layer for layer in layers if not 0 <= layer < n]
    if outside:
        raise ValueError(
            f"layers {outside} are outside the model, which has layers 0..{n - 1} "
            "(negative indices are not accepted)"
        )
    return tuple(sorted(set(layers)))


def _check_heads(model: HookedLVLM, heads: Sequence[int] | None) -> tuple[int, ...] | None:
    if heads is None:
        return None
    heads = tuple(heads)
    bad = [h for h in heads if not 0 <= h < model.n_heads]
    if not heads or bad:
        raise ValueError(
            f"heads must be a non-empty list of head indices in 0..{model.n_heads - 1}, "
            f"got {list(heads)}"
        )
    return tuple(sorted(set(heads)))


@dataclass
class Knockout:
    """Score hooks blocking attention along edges in a window of layers.

    Use it as a context manager (hooks attached to the model inside the block),
    or pass :attr:`fwd_hooks` to ``run_with_hooks`` together with other hooks::

        with knockout(model, inputs, [("image", "question")], range(4, 8)):
            logits = model(inputs)
        logits = model.run_with_hooks(inputs, fwd_hooks=ko.fwd_hooks + my_hooks)

    The hooks only fit runs of the batch they were built for (same shape).

    Attributes:
        model: the model the hooks are for.
        inputs: the batch they are for (families that recompute attention read its
            position ids and attention mask).
        blocked: ``[batch, query, key]``, True where the edges block attention.
        layers: layers whose attention is edited.
        heads: query heads edited in each of those layers (None = all).
    """

    model: HookedLVLM = field(repr=False)
    inputs: LVLMInputs = field(repr=False)
    blocked: Bool[Tensor, "batch query key"] = field(repr=False)
    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    _stack: contextlib.ExitStack | None = field(default=None, repr=False)

    def mask_scores(
        self, scores: Float[Tensor, "batch head query key"], hook
    ) -> Float[Tensor, "batch head query key"]:
        """Hook on pre-softmax scores: the blocked pairs (of the chosen heads) get the
        dtype's minimum."""
        if scores.shape[:1] + scores.shape[2:] != self.blocked.shape:
            raise ValueError(
                f"{hook.name}: scores of shape {tuple(scores.shape)} do not fit a knockout "
                f"built for [batch, query, key] = {tuple(self.blocked.shape)}; build the "
                "knockout from the inputs you run (no KV cache)"
            )
        block = self.blocked[:, None]
        if self.heads is not None:
            chosen = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            chosen[list(self.heads)] = True
            block = block & chosen[None, :, None, None]
        return scores.masked_fill(block, torch.finfo(scores.dtype).min)

    @property
    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        """``[(hook name, fn), ...]`` for ``run_with_hooks`` / ``model.hooks``: the blocked
        scores filled at ``hook_attn_scores``, or recomputed attention, as the family's
        :attr:`~tl_lvlm.families.LVLMFamily.attention_edits` says."""
        if self.model.family.attention_edits == "recompute":
            return recomputed_knockout_hooks(self.model, self)
        return [
            (f"blocks.{layer}.attn.hook_attn_scores", self.mask_scores) for layer in self.layers
        ]

    def __enter__(self) -> Knockout:
        if self._stack is not None:
            raise RuntimeError("this knockout is already active")
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.model.bridge.hooks(fwd_hooks=self.fwd_hooks))
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.close()


@checks_own_arguments
def knockout(
    model: HookedLVLM,
    inputs: LVLMInputs,
    edges: Edge | Sequence[Edge],
    layers: int | Sequence[int] | None = None,
    *,
    heads: Sequence[int] | None = None,
) -> Knockout:
    """Block attention along ``edges`` in ``layers`` (see the module's edge convention).

    Args:
        model: a HookedLVLM whose attention computes its own scores.
        inputs: the batch the knockout is for.
        edges: one ``(source, destination)`` edge or a list; ``("question", "final")``
            stops the final token's queries from reading question keys.
        layers: a layer index, a window such as ``range(4, 8)``, or None for all layers.
        heads: query heads to edit in each of ``layers`` (None = all heads). With
            grouped-query attention this is per *query* head. Compose several
            knockouts for different heads in different layers.

    Returns:
        A :class:`Knockout`: a context manager, and ``.fwd_hooks`` for ``run_with_hooks``.

    Raises:
        ValueError: unknown or empty token group, layers or heads outside the model,
            or edges that leave some query with no key to attend to.
        NotImplementedError: the architecture discards edits of ``hook_attn_scores``.
    """
    layers = _check_layers(model, layers)
    heads = _check_heads(model, heads)
    model.family.check_knockout(model.bridge, layers)
    blocked = knockout_mask(inputs, edges)
    _check_rows_keep_a_key(inputs, blocked)
    return Knockout(model, inputs, blocked, layers, heads)


# ---------------------------------------------------------------- window sweep
@dataclass
class FlowSweep:
    """Target logits (the metric) as a knockout window slides over the layers, per edge set.

    The normalized logit is ``logit(knocked) / logit(clean)`` of the target token at
    the final position: 1 = the knockout leaves the answer's logit unchanged, 0 = it
    removes it. This is the paper's relative-logit measure; it needs a positive
    clean logit, so samples without one are excluded (and listed in ``excluded``).
    Other metrics: ``metric(knocked) / metric(clean)`` likewise, and for ``"logprob"``
    ``exp(knocked - clean)``, the probability ratio (no sample excluded for its sign).

    Attributes:
        window: layers per knockout window.
        starts: ``[n_windows]`` first layer of each window.
        targets: ``[n_samples]`` target token ids.
        clean: ``[n_samples]`` clean target logits.
        knocked: edge-set name -> ``[n_windows, n_samples]`` knocked-out target logits.
        excluded: sample index -> why it is left out of :meth:`normalized`.
        edges: edge-set name -> its edges, as group-name lists (JSON-friendly).
        metric: the metric's name (``clean`` and ``knocked`` are its values).
        foils: ``[n_samples]`` foil token ids of ``"logit_diff"``, else None.
    """

    window: int
    starts: list[int]
    targets: np.ndarray
    clean: np.ndarray
    knocked: dict[str, np.ndarray]
    excluded: dict[int, str]
    edges: dict[str, list[list[list[str]]]]
    metric: str = "logit"
    foils: np.ndarray | None = None

    @property
    def kept(self) -> np.ndarray:
        """``[n_kept]`` indices of the samples that enter the normalized curves."""
        return np.array([i for i in range(len(self.clean)) if i not in self.excluded], int)

    def normalized(self, name: str) -> np.ndarray:
        """``[n_windows, n_kept]`` normalized logits of edge set ``name``."""
        kept = self.kept
        if self.metric == "logprob":
            return np.exp(self.knocked[name][:, kept] - self.clean[kept])
        return self.knocked[name][:, kept] / self.clean[kept]

    @property
    def normalization(self) -> str:
        """What :meth:`normalized` is, as a formula."""
        if self.metric == "logprob":
            return "p(knocked) / p(clean)"
        return f"{self.metric}(knocked) / {self.metric}(clean)"

    def curves(self) -> dict[str, np.ndarray]:
        """Edge-set name -> ``[n_windows]`` normalized logit averaged over kept samples."""
        if not len(self.kept):
            raise ValueError(f"every sample was excluded: {self.excluded}")
        return {name: self.normalized(name).mean(1) for name in self.knocked}

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-serializable Python values."""
        return {
            "normalization": self.normalization,
            "metric": self.metric,
            "foils": None if self.foils is None else self.foils.tolist(),
            "window": self.window,
            "starts": self.starts,
            "edges": self.edges,
            "targets": self.targets.tolist(),
            "clean_logits": self.clean.tolist(),
            "knocked_logits": {k: v.tolist() for k, v in self.knocked.items()},
            "excluded": {str(k): v for k, v in self.excluded.items()},
            "curves": {k: v.tolist() for k, v in self.curves().items()} if len(self.kept) else {},
        }

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowSweep:
        """The sweep :meth:`to_dict` wrote (read back from JSON)."""
        return cls(
            window=int(data["window"]),
            starts=[int(s) for s in data["starts"]],
            targets=np.asarray(data["targets"], dtype=np.int64),
            clean=np.asarray(data["clean_logits"], dtype=np.float64),
            knocked={k: np.asarray(v, dtype=np.float64) for k, v in data["knocked_logits"].items()},
            excluded={int(k): v for k, v in data["excluded"].items()},
            edges=data["edges"],
        )


def _windows(n_layers: int, window: int | None) -> tuple[int, list[int]]:
    # Default: an eighth of the depth (4 layers of LLaVA-1.5-7B's 32), at least 1.
    window = max(1, n_layers // 8) if window is None else window
    if not isinstance(window, int) or not 1 <= window <= n_layers:
        raise ValueError(f"window must be an int in 1..{n_layers} (the model's layers)")
    return window, list(range(n_layers - window + 1))


def _edge_json(edges: Sequence[Edge]) -> list[list[list[str]]]:
    return [[list(resolve_groups(s)), list(resolve_groups(d))] for s, d in _as_edge_list(edges)]


@torch.no_grad()
def _metric_values(
    model: HookedLVLM,
    inputs: LVLMInputs,
    metric: Metric,
    targets: Int[Tensor, " batch"],
    foils: Int[Tensor, " batch"] | None,
    fwd_hooks=(),
) -> Float[Tensor, " batch"]:
    """The metric of the fp32 final-position logits of a run with ``fwd_hooks``."""
    return metric.of_logits(model.final_logits(inputs, fwd_hooks), targets, foils)


def _per_sample_ids(
    ids: Int[Tensor, " batch"] | Int[np.ndarray, " batch"] | Sequence[int | None] | int | None,
    n: int,
    name: str,
) -> list[int | np.integer | None]:
    """``targets=`` / ``foil=`` as one entry (a token id or None) per sample."""
    if ids is None or isinstance(ids, (int, np.integer)):
        return [ids] * n
    if isinstance(ids, Tensor):
        ids = ids.reshape(-1).tolist()
    if len(ids) != n:
        raise ValueError(f"{len(ids)} {name} for {n} samples")
    return list(ids)


@checks_own_arguments
def flow_sweep(
    model: HookedLVLM,
    samples: LVLMInputs | Sequence[tuple] | Any,
    edges: Mapping[str, Sequence[Edge]],
    window: int | None = None,
    *,
    targets: Int[Tensor, " batch"] | Int[np.ndarray, " batch"] | Sequence[int | None] | None = None,
    metric: MetricSpec | Metric = "logit",
    foil: int | Int[Tensor, " batch"] | Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    labels: Sequence[int | str | None] | None = None,
    question: str | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    image_size: int | tuple[int, int] | None = None,
) -> FlowSweep:
    """Slide a knockout window over the layers for several edge sets.

    For every window start ``s`` (``0 .. n_layers - window``) and edge set, the
    edges are knocked out in layers ``s .. s + window - 1`` and the target's logit
    at the final position is recorded (the metric's value).

    Args:
        model: the model.
        samples: the sample forms of :func:`~tl_lvlm.head_attribution`: an
            :class:`~tl_lvlm.LVLMInputs` batch (one sample per row),
            ``[(image, question[, label]), ...]``, or a ``datasets.Dataset`` with
            ``question=``; unprepared samples are prepared in one batch.
        edges: edge-set name -> edges, e.g. ``PAPER_EDGE_SETS["text_flow"]``.
        window: layers per window; default ``max(1, n_layers // 8)``.
        targets: ``[batch]`` target token per sample; default (or a None entry, for that
            sample) the clean greedy answer. Samples whose clean greedy answer is not their
            given target are excluded.
        metric: what is recorded of the fp32 final-position logits
            (:mod:`tl_lvlm.ablation.metric`): ``"logit"`` (the target's), ``"logit_diff"``
            (target minus ``foil``), ``"logprob"``, or a callable ``[batch, vocab] ->
            [batch]``.
        foil: with ``"logit_diff"``, the token id subtracted, for every sample or one per
            sample; a sample whose greedy answer (its target) is its foil is excluded.
        batch_size: samples per forward pass.
        progress: show a progress bar.
        labels: expected answer per sample (a token id or word; None = unknown), or in the
            tuples or a dataset's label column: the target, and a sample the model answers
            otherwise is excluded; a label of several words is attributed through its first
            token and checked whole (:func:`~tl_lvlm.analysis.heads.label_tokens`). Not
            together with ``targets``.
        question, image_column, label_column, image_size: as for
            :func:`~tl_lvlm.head_attribution`.

    Returns:
        A :class:`FlowSweep`; ``.curves()`` gives the normalized curves and
        :func:`plot_flow_sweep` draws them.
    """
    if not edges:
        raise ValueError("edges is empty: give at least one named edge set")
    window, starts = _windows(model.n_layers, window)
    edge_lists = {name: _as_edge_list(e) for name, e in edges.items()}
    prepared = Samples.parse(
        model, samples, labels, question=question, image_column=image_column,
        label_column=label_column, image_size=image_size,
    )  # fmt: skip
    wholes = prepared.label_tokens()
    if any(whole is not None for whole in wholes):
        if targets is not None:
            raise ValueError(
                "labels (labels=, the tuples' or a dataset's) and targets= were both given; "
                "pass one: a label is the target and is checked against the model's answer"
            )
        targets = [None if whole is None else whole[0] for whole in wholes]
    samples = prepared.all_inputs()
    n = samples.batch_size
    targets = _per_sample_ids(targets, n, "targets")
    metric = Metric.resolve(metric)
    foils = _per_sample_ids(foil, n, "foils")
    for i, (f, t) in enumerate(zip(foils, targets, strict=True)):
        try:
            metric.check_foil(f, t)
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
    foils = torch.tensor(foils) if metric.needs_foil else None
    # given[i]: sample i has a target; -1 marks the others until their greedy answer is known.
    given = torch.tensor([t is not None for t in targets])
    targets = torch.tensor([-1 if t is None else int(t) for t in targets], dtype=torch.long)
    clean = torch.empty(n)
    predicted = torch.empty(n, dtype=torch.long)
    knocked = {name: torch.empty(len(starts), n) for name in edge_lists}
    bar = tqdm(total=n * len(starts) * len(edge_lists), desc="flow sweep", disable=not progress)
    for lo in range(0, n, batch_size):
        rows = list(range(lo, min(lo + batch_size, n)))
        batch = samples[rows]
        with torch.no_grad():
            logits = model.final_logits(batch)
        predicted[rows] = logits.argmax(-1).cpu()
        batch_targets = torch.where(given[rows], targets[rows], predicted[rows]).to(logits.device)
        batch_foils = None if foils is None else foils[rows].to(logits.device)
        clean[rows] = metric.of_logits(logits, batch_targets, batch_foils).cpu()
        for name, edge_list in edge_lists.items():
            for i, start in enumerate(starts):
                ko = knockout(model, batch, edge_list, range(start, start + window))
                knocked[name][i, rows] = _metric_values(
                    model, batch, metric, batch_targets, batch_foils, ko.fwd_hooks
                ).cpu()
                bar.update(len(rows))
    bar.close()
    final_targets = torch.where(given, targets, predicted)
    excluded = {}
    for i in range(n):
        if given[i] and predicted[i] != final_targets[i]:
            excluded[i] = f"wrong answer: predicts token {int(predicted[i])}"
        elif (
            wholes[i] is not None
            and len(wholes[i]) > 1
            and not answers_label(model, samples[i], wholes[i])
        ):
            # The first token is right, the rest of a multi-word label is not.
            written = model.generate(samples[i], max_new_tokens=len(wholes[i]))[0]
            excluded[i] = f"wrong answer: writes {written!r}, not {prepared.labels[i]!r}"
        elif foils is not None and foils[i] == final_targets[i]:
            excluded[i] = f"the foil is the target (the greedy answer, token {int(foils[i])})"
        elif metric.name != "logprob" and clean[i] <= 0:
            excluded[i] = f"clean {metric.description} {float(clean[i]):.4g} <= 0: ratio undefined"
    return FlowSweep(
        window=window,
        starts=starts,
        targets=final_targets.numpy(),
        clean=clean.double().numpy(),
        knocked={k: v.double().numpy() for k, v in knocked.items()},
        excluded=excluded,
        edges={name: _edge_json(e) for name, e in edge_lists.items()},
        metric=metric.name,
        foils=None if foils is None else foils.numpy(),
    )


def plot_flow_sweep(
    sweep: FlowSweep,
    path: str | os.PathLike | None = None,
    *,
    title: str = "Attention knockout",
    caption: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One curve per edge set: normalized target logit vs. the window's first layer.

    The band around each curve is ± one standard deviation over samples. Curves differ in
    marker, line style and width (the first drawn widest), so that one lying on another
    still shows. ``caption`` (e.g. model, question and settings) is written above the
    figure (:func:`attribution.plots.add_caption`).
    """
    from matplotlib.ticker import MaxNLocator

    from attribution.plots import add_caption, new_figure, save_figure

    fig, ax = new_figure(ax, figsize=(5, 3.5))
    x = np.asarray(sweep.starts)
    for i, (name, mean) in enumerate(sweep.curves().items()):
        std = sweep.normalized(name).std(1)
        (line,) = ax.plot(
            x,
            mean,
            label=name,
            marker=_MARKERS[i % len(_MARKERS)],
            markersize=8 - 2 * (i % 3),
            markerfacecolor="none" if i % 2 else None,
            linestyle=_LINESTYLES[i % len(_LINESTYLES)],
            linewidth=2.5 - 0.7 * (i % 3),
        )
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set(
        title=title,
        xlabel=f"first layer of the knockout window ({window_words(sweep.window)})",
        ylabel=sweep.normalization,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    add_caption(fig, caption)
    return save_figure(fig, path)


def window_words(window: int) -> str:
    """``"window of 1 layer"``, ``"window of 4 layers"``."""
    return f"window of {window} layer{'' if window == 1 else 's'}"


#: Markers and line styles cycled over a sweep's curves (see plot_flow_sweep).
_MARKERS = ("o", "s", "^", "D", "v")
_LINESTYLES = ("-", "--", ":", "-.")
