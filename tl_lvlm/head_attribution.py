"""Head attribution on an LVLM: which attention heads carry the image to the answer.

For each sample (image, question[, label]) the driver

1. picks the target token: ``target`` if given, else the label's first token, else
   the model's greedy answer; a sample whose greedy answer differs from its label
   is excluded (``"wrong_answer"``);
2. builds an :class:`~tl_lvlm.engine.AblationEngine` (image K/V of ablated heads
   replaced by the baseline, as seen by text queries) and records the target logit
   with every head kept (clean) and every head ablated; a sample with
   ``clean - all ablated < min_logit_gap`` is excluded (``"small_gap"``), since its
   normalized logit would divide by (almost) nothing;
3. runs ``n_masks`` random masks (each head ablated with probability ``p_ablate``)
   through :func:`attribution.collect` (resumable with ``store_dir``) and normalizes
   ``y = (logit(mask) - logit(all ablated)) / (logit(clean) - logit(all ablated))``;
4. fits ElasticNet from masks to ``y`` (:func:`attribution.fit`): the coefficients
   are the heads' attributions, with held-out R² and Pearson ρ;
5. optionally scores the baselines of :mod:`tl_lvlm.baselines` and measures
   faithfulness / completeness curves of every ranking (:mod:`tl_lvlm.evaluation`),
   each sample ranked by its own scores.

Excluded samples are returned with their reason, never silently dropped. The same
masks (drawn from ``seed``) are used for every sample, so a sample's result does not
depend on which other samples run with it: shards of a run merge into exactly the
single-process result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from numpy.typing import ArrayLike
from tqdm.auto import tqdm

from attribution import (
    Aggregate,
    FitResult,
    Results,
    aggregate,
    collect,
    default_ks,
    fit,
    load_results,
    merge_shards,
    random_ranking,
    rank_by,
    sample_masks,
    save_results,
    shard_indices,
)
from tl_lvlm.ablation import BASELINE_KINDS, ImageKVBaseline, check_scope, image_kv_baseline
from tl_lvlm.baselines import (
    ATTENTION_BASELINES,
    BASELINES,
    attention_to_image,
    single_head_effects,
)
from tl_lvlm.engine import AblationEngine
from tl_lvlm.evaluation import Evaluation, evaluate_rankings
from tl_lvlm.fingerprint import tensor_sha256
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.templates import split_template

#: Why a sample was left out; index = the ``status`` code stored in results files (0 = kept).
STATUS = ("kept", "wrong_answer", "small_gap")
#: Name of head attribution's own ranking in evaluations.
HEAD_ATTRIBUTION = "head_attribution"
RESULTS_KIND = "tl_lvlm.head_attribution/1"
#: Configuration keys the collected logits depend on (part of every store's meta).
STORE_KEYS = ("model", "n_layers", "n_heads", "n_masks", "p_ablate", "baseline", "scope", "seed")

Answer = int | str


@dataclass
class ExcludedSample:
    """A sample left out of the attribution, and why.

    Attributes:
        sample_id: index of the sample in the input.
        reason: ``"wrong_answer"`` (greedy answer is not the label) or ``"small_gap"``
            (clean and all-ablated target logits closer than ``min_logit_gap``).
        answer: token id of the model's greedy answer.
        target: token id whose logit would have been attributed.
        label: token id of the expected answer, or None.
        clean_logit: target logit with every head kept.
        ablated_logit: target logit with every head ablated.
    """

    sample_id: int
    reason: Literal["wrong_answer", "small_gap"]
    answer: int
    target: int
    label: int | None
    clean_logit: float
    ablated_logit: float

    def describe(self, tokenizer=None) -> str:
        """One line for reports; token ids are decoded when a tokenizer is given."""

        def tok(i: int) -> str:
            return f"{i} ({tokenizer.decode([i])!r})" if tokenizer is not None else str(i)

        if self.reason == "wrong_answer":
            return (
                f"sample {self.sample_id} (wrong_answer): the model answers "
                f"{tok(self.answer)}, the label is {tok(self.label)}"
            )
        gap = self.clean_logit - self.ablated_logit
        return (
            f"sample {self.sample_id} (small_gap): clean - all-ablated logit of "
            f"{tok(self.target)} is {gap:.4g} "
            f"(clean {self.clean_logit:.4g}, ablated {self.ablated_logit:.4g})"
        )


@dataclass
class HeadAttributionResult:
    """Head attribution of the kept samples, the excluded ones, and the evaluation.

    Row i of every per-sample array belongs to kept sample ``sample_ids[i]``.

    Attributes:
        sample_ids: int64 ``[n_kept]`` indices of the kept samples in the input.
        fits: one :class:`attribution.FitResult` per kept sample (``coef`` flat over
            heads, index ``layer * n_heads + head``).
        answers: int64 ``[n_kept]`` token id of the model's greedy answer.
        labels: int64 ``[n_kept]`` token id of the expected answer (-1 = no label).
        targets: int64 ``[n_kept]`` token id whose logit was attributed.
        clean_logit: ``[n_kept]`` target logit with every head kept.
        ablated_logit: ``[n_kept]`` target logit with every head ablated.
        y: ``[n_kept, n_masks]`` normalized target logit of every mask.
        masks: bool ``[n_masks, n_layers, n_heads]`` (True = kept), shared by all samples.
        excluded: samples left out, with their reasons.
        scores: baseline name -> ``[n_kept, n_layers, n_heads]`` scores (higher = more
            important); ``random`` has none.
        evaluation: faithfulness / completeness curves per ranking (rows = kept
            samples), or None when not evaluated.
        config: the run's configuration (JSON-serializable; the results file's meta).
    """

    sample_ids: Int[np.ndarray, " n_kept"]
    fits: list[FitResult]
    answers: Int[np.ndarray, " n_kept"]
    labels: Int[np.ndarray, " n_kept"]
    targets: Int[np.ndarray, " n_kept"]
    clean_logit: Float[np.ndarray, " n_kept"]
    ablated_logit: Float[np.ndarray, " n_kept"]
    y: Float[np.ndarray, "n_kept n_masks"]
    masks: Bool[np.ndarray, "n_masks n_layers n_heads"]
    excluded: list[ExcludedSample]
    scores: dict[str, Float[np.ndarray, "n_kept n_layers n_heads"]]
    evaluation: Evaluation | None
    config: dict[str, Any]

    @property
    def n_layers(self) -> int:
        return int(self.config["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.config["n_heads"])

    @property
    def coef(self) -> Float[np.ndarray, "n_kept n_layers n_heads"]:
        """Attribution of every head, per kept sample."""
        shape = (len(self.fits), self.n_layers, self.n_heads)
        return (
            np.stack([f.coef for f in self.fits]).reshape(shape) if self.fits else np.zeros(shape)
        )

    @property
    def r2(self) -> Float[np.ndarray, " n_kept"]:
        """Held-out R² of each kept sample's fit."""
        return np.array([f.r2 for f in self.fits])

    @property
    def pearson(self) -> Float[np.ndarray, " n_kept"]:
        """Held-out Pearson ρ of each kept sample's fit."""
        return np.array([f.pearson for f in self.fits])

    @property
    def aggregate(self) -> Aggregate:
        """Coefficients and metrics averaged over kept samples (:func:`attribution.aggregate`)."""
        if not self.fits:
            raise ValueError(
                f"no sample was kept ({len(self.excluded)} excluded: see .excluded), so "
                "there is nothing to aggregate"
            )
        return aggregate(self.fits)

    @property
    def mean(self) -> Float[np.ndarray, "n_layers n_heads"]:
        """Attribution averaged over kept samples."""
        return self.aggregate.coef.reshape(self.n_layers, self.n_heads)

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """``(layer, head, mean coefficient)`` of the ``k`` highest-ranked heads."""
        mean = self.mean
        return [
            (int(j // self.n_heads), int(j % self.n_heads), float(mean.flat[j]))
            for j in rank_by(mean)[:k]
        ]

    def heads_needed(self) -> dict[str, int | None]:
        """Per ranking: fewest heads for faithfulness > 0.8 and completeness < 0.2."""
        if self.evaluation is None:
            raise ValueError("this result was computed with evaluate=False; it has no curves")
        return self.evaluation.heads_needed()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write kept and excluded samples to a safetensors results file.

        Format: :func:`attribution.save_results` with one row per sample (kept and
        excluded, NaN where an excluded sample has no value) and arrays ``status``
        (index into :data:`STATUS`), ``answer``, ``target``, ``label`` (-1 = none), ``clean_logit``,
        ``ablated_logit``, ``coef`` ``[n, n_layers, n_heads]``, ``intercept``,
        ``r2``, ``pearson``, ``y`` ``[n, n_masks]``, ``y_test`` / ``y_pred``
        ``[n, n_test]``, ``score.{baseline}`` ``[n, n_layers, n_heads]``,
        ``faithfulness.{ranking}`` / ``completeness.{ranking}`` ``[n, n_points]``; the
        run configuration (with ``ks``) is the meta. Shards of one run merge with
        :meth:`merge`.
        """
        n_kept, n_excl = len(self.sample_ids), len(self.excluded)
        excl = self.excluded

        def rows(kept: np.ndarray, dtype=np.float64) -> np.ndarray:
            kept = np.asarray(kept, dtype=dtype).reshape((n_kept, *np.shape(kept)[1:]))
            pad = np.full((n_excl, *kept.shape[1:]), np.nan, dtype=dtype)
            return np.concatenate([kept, pad])

        # attribution.fit's holdout size; needed when no sample was kept, so that this shard's
        # arrays still have the row shape of the other shards'.
        n_test = int(round(self.config["holdout"] * len(self.masks)))
        arrays = {
            "status": np.array([0] * n_kept + [STATUS.index(e.reason) for e in excl], np.int8),
            "answer": np.array(list(self.answers) + [e.answer for e in excl], np.int64),
            "target": np.array(list(self.targets) + [e.target for e in excl], np.int64),
            "label": np.array(list(self.labels) + [_no_label(e.label) for e in excl], np.int64),
            "clean_logit": np.array(list(self.clean_logit) + [e.clean_logit for e in excl]),
            "ablated_logit": np.array(list(self.ablated_logit) + [e.ablated_logit for e in excl]),
            "coef": rows(self.coef),
            "intercept": rows([f.intercept for f in self.fits]),
            "r2": rows(self.r2),
            "pearson": rows(self.pearson),
            "y": rows(self.y.reshape(n_kept, len(self.masks))),
            "y_test": rows(np.reshape([f.y_test for f in self.fits], (n_kept, n_test))),
            "y_pred": rows(np.reshape([f.y_pred for f in self.fits], (n_kept, n_test))),
        }
        for name, value in self.scores.items():
            arrays[f"score.{name}"] = rows(value)
        if self.evaluation is not None:
            for kind in ("faithfulness", "completeness"):
                for name, value in getattr(self.evaluation, kind).items():
                    arrays[f"{kind}.{name}"] = rows(value)
        ids = np.concatenate([self.sample_ids, [e.sample_id for e in excl]]).astype(np.int64)
        return save_results(path, ids, arrays, self.config)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadAttributionResult:
        """Read a file written by :meth:`save`."""
        return cls.from_results(load_results(path))

    @classmethod
    def merge(cls, paths: Sequence[str | os.PathLike]) -> HeadAttributionResult:
        """Merge the results files of a run's shards (files or directories of them)."""
        return cls.from_results(merge_shards(paths))

    @classmethod
    def from_results(cls, results: Results) -> HeadAttributionResult:
        """Rebuild a result from :class:`attribution.Results` (e.g. merged shards)."""
        config, a = results.meta, results.arrays
        if config.get("kind") != RESULTS_KIND:
            raise ValueError(
                f"not a head attribution results file (meta kind {config.get('kind')!r}, "
                f"expected {RESULTS_KIND!r})"
            )
        kept = a["status"] == 0
        excluded = [
            ExcludedSample(
                sample_id=int(results.sample[i]),
                reason=STATUS[int(a["status"][i])],
                answer=int(a["answer"][i]),
                target=int(a["target"][i]),
                label=None if a["label"][i] < 0 else int(a["label"][i]),
                clean_logit=float(a["clean_logit"][i]),
                ablated_logit=float(a["ablated_logit"][i]),
            )
            for i in np.flatnonzero(~kept)
        ]
        n_test = a["y_test"].shape[1]
        fits = [
            FitResult(
                coef=a["coef"][i].ravel(),
                intercept=float(a["intercept"][i]),
                r2=float(a["r2"][i]),
                pearson=float(a["pearson"][i]),
                n_train=int(config["n_masks"]) - n_test,
                n_test=n_test,
                y_test=a["y_test"][i],
                y_pred=a["y_pred"][i],
            )
            for i in np.flatnonzero(kept)
        ]
        evaluation = None
        if config["evaluated"]:
            curves = {
                kind: {name: a[f"{kind}.{name}"][kept] for name in config["rankings"]}
                for kind in ("faithfulness", "completeness")
            }
            evaluation = Evaluation(ks=np.asarray(config["ks"], dtype=np.int64), **curves)
        return cls(
            sample_ids=results.sample[kept],
            fits=fits,
            answers=a["answer"][kept],
            labels=a["label"][kept],
            targets=a["target"][kept],
            clean_logit=a["clean_logit"][kept],
            ablated_logit=a["ablated_logit"][kept],
            y=a["y"][kept],
            masks=_masks(config),
            excluded=excluded,
            scores={
                k.removeprefix("score."): v[kept] for k, v in a.items() if k.startswith("score.")
            },
            evaluation=evaluation,
            config=config,
        )


def answer_token_id(model, answer: Answer, template: str | None = None) -> int:
    """Token id of the first token of ``answer`` as the model would write it after the prompt.

    An int is taken as a token id. A string is tokenized after the template's text
    that follows the question (e.g. ``" ASSISTANT:"``), with a space in between
    unless that text ends in whitespace, so ``"seven"`` gives the id of ``" seven"``
    for LLaVA-style tokenizers. Multi-token answers give their first token.
    """
    tokenizer = model.tokenizer
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        if not 0 <= int(answer) < len(tokenizer):
            raise ValueError(f"token id {answer} is outside the vocabulary [0, {len(tokenizer)})")
        return int(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise TypeError(
            f"an answer/label/target must be a token id (int) or a non-empty word (str), "
            f"got {answer!r}"
        )
    context = split_template(template or model.template)[2]
    sep = "" if context[-1:].isspace() or answer[:1].isspace() else " "
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + sep + answer, add_special_tokens=False)["input_ids"]
    if len(full) <= len(base) or full[: len(base)] != base:
        raise ValueError(
            f"cannot find the first token of answer {answer!r}: tokenizing it after "
            f"{context!r} changes the template's own tokens; pass the token id instead"
        )
    return int(full[len(base)])


def head_attribution(
    model,
    samples: Sequence[tuple] | LVLMInputs,
    *,
    n_masks: int = 10_000,
    p_ablate: float = 0.75,
    baseline: Literal["mean", "zero"] | ImageKVBaseline = "mean",
    target: Answer | Sequence[Answer | None] | None = None,
    labels: Sequence[Answer | None] | None = None,
    reference: Sequence | LVLMInputs | None = None,
    scope: Literal["text", "all"] = "text",
    min_logit_gap: float = 0.5,
    alpha: float = 0.0005,
    l1_ratio: float = 0.5,
    holdout: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    store_dir: str | os.PathLike | None = None,
    shard: int | None = None,
    n_shards: int | None = None,
    evaluate: bool = True,
    baselines: Sequence[str] = BASELINES,
    ks: ArrayLike | None = None,
    progress: bool = True,
) -> HeadAttributionResult:
    """Attribute each sample's target logit to the attention heads reading the image.

    Args:
        model: a :class:`~tl_lvlm.HookedLVLM`.
        samples: ``[(image, question), ...]`` or ``[(image, question, label), ...]``
            (PIL images or ``HxWx3`` arrays), or an :class:`~tl_lvlm.LVLMInputs` batch
            from ``model.prepare``. Sample ids are the positions in this sequence.
        n_masks: random masks per sample (the paper: 10,000); at least
            ``n_layers * n_heads + 1``.
        p_ablate: probability that a head is ablated in a mask, in (0, 1).
        baseline: ``"mean"`` (image K/V averaged over ``reference``), ``"zero"``, or a
            precomputed :class:`~tl_lvlm.ablation.ImageKVBaseline`.
        target: token whose logit is attributed, for every sample (an id or a word,
            see :func:`answer_token_id`) or one per sample (None = default). Default:
            the label's first token, else the model's greedy answer.
        labels: expected answer per sample (id or word; None = unknown); with tuple
            samples, give labels in the tuples instead. Samples answered otherwise are
            excluded as ``"wrong_answer"``.
        reference: images (or an LVLMInputs batch) whose mean image K/V is the
            ``"mean"`` baseline, prompted with the first sample's question. Default: all
            the samples' images (all shards', so that every shard uses one baseline).
        scope: ``"text"`` (ablated image K/V seen by text queries only) or ``"all"``.
        min_logit_gap: samples with ``clean - all-ablated`` target logit below this are
            excluded as ``"small_gap"`` (the normalization multiplies logit noise by
            ``1 / gap``; a negative gap means the image lowers the target).
        alpha, l1_ratio, holdout: passed to :func:`attribution.fit`.
        seed: seeds the masks, the fit's holdout and the random rankings.
        batch_size: masks per engine call.
        store_dir: keep each sample's raw target logits in ``store_dir/sample-{id}``
            (:func:`attribution.collect` store): an interrupted run resumes there.
        shard, n_shards: run only this shard's block of samples
            (:func:`attribution.shard_indices`; default from torchrun/SLURM variables).
        evaluate: score the baselines and measure faithfulness / completeness curves.
        baselines: which of :data:`tl_lvlm.baselines.BASELINES` to compare against.
        ks: numbers of top heads for the curves; default :func:`attribution.default_ks`.
        progress: show progress bars.

    Raises:
        TypeError: samples that are neither (image, question[, label]) tuples nor
            LVLMInputs; a label/target that is neither an int nor a word.
        ValueError: an argument out of range (named in the message).
    """
    n_components = model.n_layers * model.n_heads
    _check_args(
        n_masks, n_components, p_ablate, holdout, min_logit_gap, batch_size, baselines, scope
    )
    prepared = _Samples.parse(model, samples, labels)
    # Resolved up front, so that a bad label or target fails before any model run.
    template = prepared.template

    def token_ids(answers: list) -> list[int | None]:
        return [None if a is None else answer_token_id(model, a, template) for a in answers]

    label_ids = token_ids(prepared.labels)
    target_ids = token_ids(_per_sample(target, len(prepared), "target"))
    if ks is None:
        ks = default_ks(n_components)
    ks = np.asarray(ks, dtype=np.int64)
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 0 or ks.max() > n_components:
        raise ValueError(f"ks must be a non-empty 1-D array of head counts in [0, {n_components}]")

    ids = shard_indices(len(prepared), shard, n_shards)
    kv_baseline, baseline_id = _baseline(model, baseline, reference, prepared)
    config = {
        "kind": RESULTS_KIND,
        "model": str(getattr(model.hf_model.config, "_name_or_path", "")),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "n_samples": len(prepared),
        "n_masks": int(n_masks),
        "p_ablate": float(p_ablate),
        "baseline": baseline_id,
        "scope": scope,
        "template": template,
        "min_logit_gap": float(min_logit_gap),
        "alpha": float(alpha),
        "l1_ratio": float(l1_ratio),
        "holdout": float(holdout),
        "seed": int(seed),
        "evaluated": bool(evaluate),
        "rankings": [HEAD_ATTRIBUTION, *baselines] if evaluate else [],
        "ks": ks.tolist() if evaluate else [],
    }
    masks = _masks(config)
    flat_masks = masks.reshape(n_masks, n_components)

    kept: list[_Kept] = []
    excluded: list[ExcludedSample] = []
    curves: list[Evaluation] = []
    for sample_id in tqdm(ids, desc="head attribution", unit="sample", disable=not progress):
        inputs = prepared.inputs(sample_id)
        label = label_ids[sample_id]
        given = target_ids[sample_id] if target_ids[sample_id] is not None else label
        engine = AblationEngine(model, inputs, kv_baseline, target=given, scope=scope)
        answer = int(engine.clean_logits.argmax())
        run = _Run(engine, model.n_layers, model.n_heads)
        run.ablated = float(run.logits(np.zeros((1, n_components), dtype=bool))[0])
        reason = None
        if label is not None and label != answer:
            reason = "wrong_answer"
        elif not run.clean - run.ablated >= min_logit_gap:
            reason = "small_gap"
        if reason is not None:
            excluded.append(
                ExcludedSample(
                    sample_id, reason, answer, engine.target, label, run.clean, run.ablated
                )
            )
            continue
        store = None if store_dir is None else Path(store_dir) / f"sample-{sample_id:06d}"
        # What the collected logits depend on, so that a store is never reused for another run.
        meta = {key: config[key] for key in STORE_KEYS}
        meta.update(
            sample=sample_id,
            target=engine.target,
            inputs_sha256=tensor_sha256(inputs.input_ids, inputs.pixel_values),
        )
        logits = collect(
            run.logits,
            flat_masks,
            batch_size=batch_size,
            store=store,
            meta=meta,
            progress=progress,
            desc=f"sample {sample_id}",
        )
        y = run.normalize(logits)
        result = fit(flat_masks, y, alpha=alpha, l1_ratio=l1_ratio, holdout=holdout, seed=seed)
        sample_scores = {}
        if evaluate:
            # Evaluated now, while the engine exists: engines hold the prefix K/V cache, too
            # big to keep for every sample of a large model.
            sample_scores, sample_curves = _evaluate_sample(
                model, inputs, run, result.coef, baselines, ks, _sample_seed(seed, sample_id),
                batch_size,
            )  # fmt: skip
            curves.append(sample_curves)
        kept.append(
            _Kept(
                sample_id,
                answer,
                engine.target,
                label,
                run.clean,
                run.ablated,
                y,
                result,
                sample_scores,
            )
        )

    shape = (len(kept), model.n_layers, model.n_heads)
    scores = {
        name: np.reshape([k.scores[name] for k in kept], shape)
        for name in baselines
        if evaluate and name != "random"
    }
    return HeadAttributionResult(
        sample_ids=np.array([k.sample_id for k in kept], dtype=np.int64),
        fits=[k.fit for k in kept],
        answers=np.array([k.answer for k in kept], dtype=np.int64),
        labels=np.array([_no_label(k.label) for k in kept], dtype=np.int64),
        targets=np.array([k.target for k in kept], dtype=np.int64),
        clean_logit=np.array([k.clean for k in kept]),
        ablated_logit=np.array([k.ablated for k in kept]),
        y=np.reshape([k.y for k in kept], (len(kept), n_masks)),
        masks=masks,
        excluded=excluded,
        scores=scores,
        evaluation=Evaluation.concatenate(curves, ks, config["rankings"]) if evaluate else None,
        config=config,
    )


# ---------------------------------------------------------------------- helpers
class _Run:
    """One sample's engine on flat numpy masks: raw and normalized target logits."""

    def __init__(self, engine, n_layers: int, n_heads: int):
        self.engine = engine
        self.shape = (n_layers, n_heads)
        self.clean = float(engine.clean_logit)
        self.ablated = float("nan")  # set once the all-ablated mask has run

    def logits(self, masks: Bool[np.ndarray, "b n_components"]) -> Float[np.ndarray, " b"]:
        keep = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, *self.shape)
        return self.engine.run(keep, progress=False).double().numpy()

    def normalize(self, logits: Float[np.ndarray, " b"]) -> Float[np.ndarray, " b"]:
        """``(logit - all ablated) / (clean - all ablated)``: 1 = clean, 0 = all ablated."""
        return (logits - self.ablated) / (self.clean - self.ablated)

    def normalized(self, masks: Bool[np.ndarray, "b n_components"]) -> Float[np.ndarray, " b"]:
        return self.normalize(self.logits(masks))


@dataclass
class _Kept:
    """What a kept sample contributes to the result."""

    sample_id: int
    answer: int
    target: int
    label: int | None
    clean: float
    ablated: float
    y: np.ndarray
    fit: FitResult
    scores: dict[str, np.ndarray]


@dataclass
class _Samples:
    """The input samples, prepared one at a time (only the shard's are ever run)."""

    model: Any
    pairs: list[tuple[Any, str]] | None
    batch: LVLMInputs | None
    labels: list[Answer | None]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def parse(cls, model, samples, labels) -> _Samples:
        if isinstance(samples, LVLMInputs):
            n = samples.batch_size
            return cls(model, None, samples, _per_sample(labels, n, "labels", list_only=True))
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
            raise TypeError(
                "samples must be a list of (image, question) or (image, question, label) "
                f"tuples, or LVLMInputs from model.prepare, got {type(samples).__name__}"
            )
        if len(samples) == 0:
            raise ValueError("samples is empty: pass at least one (image, question) pair")
        pairs, tuple_labels = [], []
        for i, s in enumerate(samples):
            if (
                not isinstance(s, (tuple, list))
                or len(s) not in (2, 3)
                or not isinstance(s[1], str)
            ):
                raise TypeError(
                    f"samples[{i}] must be (image, question) or (image, question, label) with a "
                    f"str question, got {type(s).__name__}"
                    + (f" of length {len(s)}" if isinstance(s, (tuple, list)) else "")
                )
            pairs.append((s[0], s[1]))
            tuple_labels.append(s[2] if len(s) == 3 else None)
        if labels is not None and any(lab is not None for lab in tuple_labels):
            raise ValueError("labels given both in the sample tuples and as labels=; pass one")
        given = (
            tuple_labels
            if labels is None
            else _per_sample(labels, len(pairs), "labels", list_only=True)
        )
        return cls(model, pairs, None, given)

    @property
    def template(self) -> str:
        return self.model.template if self.batch is None else self.batch.template

    def inputs(self, i: int) -> LVLMInputs:
        if self.batch is not None:
            return self.batch[i]
        image, question = self.pairs[i]
        return self.model.prepare([image], [question])

    def reference_inputs(self, reference) -> LVLMInputs:
        """The mean baseline's reference batch: ``reference`` or all samples' images."""
        if isinstance(reference, LVLMInputs):
            return reference
        if reference is None and self.batch is not None:
            return self.batch
        images = [image for image, _ in self.pairs] if reference is None else list(reference)
        if not images:
            raise ValueError("reference is empty: pass at least one image for the mean baseline")
        question = self.pairs[0][1] if self.pairs else self.batch.questions[0]
        # Image K/V only depend on the text before the image, so one question serves all.
        return self.model.prepare(images, question)


def _per_sample(value, n: int, name: str, *, list_only: bool = False) -> list:
    """Broadcast one value (or validate one per sample) to a list of ``n``."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, int, np.integer)) and not list_only:
        return [value] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence with one entry per sample, got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} samples; give one per sample")
    return list(value)


def _check_args(
    n_masks, n_components, p_ablate, holdout, min_logit_gap, batch_size, baselines, scope
):
    if not (0.0 < p_ablate < 1.0):
        raise ValueError(
            f"p_ablate must be in (0, 1) (the probability that a head is ablated in a mask; "
            f"the paper uses 0.75), got {p_ablate!r}"
        )
    if not isinstance(n_masks, (int, np.integer)) or n_masks < n_components + 1:
        raise ValueError(
            f"n_masks must be at least n_layers * n_heads + 1 = {n_components + 1} so that the "
            f"regression over {n_components} heads is determined, got {n_masks!r}; the paper "
            "uses 10,000"
        )
    if int(round(holdout * n_masks)) >= n_masks - n_components:
        raise ValueError(
            f"holdout={holdout} of n_masks={n_masks} leaves fewer than {n_components + 1} masks "
            "to fit on; lower holdout or raise n_masks"
        )
    if not min_logit_gap >= 0:
        raise ValueError(f"min_logit_gap must be >= 0, got {min_logit_gap!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    check_scope(scope)


def _baseline(model, baseline, reference, samples: _Samples) -> tuple[ImageKVBaseline, str]:
    """The ablation baseline and a string identifying it (for configs and stores)."""
    if isinstance(baseline, ImageKVBaseline):
        return baseline, f"custom:{tensor_sha256(baseline.k, baseline.v)[:16]}"
    if baseline not in BASELINE_KINDS:
        raise ValueError(
            f"baseline must be one of {BASELINE_KINDS} or an ImageKVBaseline, got {baseline!r}"
        )
    inputs = samples.reference_inputs(reference)
    kv_baseline = image_kv_baseline(model, inputs, kind=baseline)
    return kv_baseline, f"{baseline}:{tensor_sha256(inputs.input_ids, inputs.pixel_values)[:16]}"


def _masks(config: dict[str, Any]) -> Bool[np.ndarray, "n_masks n_layers n_heads"]:
    """The run's masks, a deterministic function of its configuration."""
    n_layers, n_heads = config["n_layers"], config["n_heads"]
    flat = sample_masks(config["n_masks"], n_layers * n_heads, config["p_ablate"], config["seed"])
    return flat.reshape(-1, n_layers, n_heads)


def _no_label(label: int | None) -> int:
    return -1 if label is None else label


def _sample_seed(seed: int, sample_id: int) -> int:
    return int(np.random.SeedSequence([seed, sample_id]).generate_state(1)[0])


def _evaluate_sample(
    model,
    inputs: LVLMInputs,
    run: _Run,
    coef: Float[np.ndarray, " n_components"],
    baselines: Sequence[str],
    ks: Int[np.ndarray, " n_points"],
    random_seed: int,
    batch_size: int,
) -> tuple[dict[str, Float[np.ndarray, " n_components"]], Evaluation]:
    """One sample's baseline scores, and curves of every ranking ranked by its own scores."""
    scores = _baseline_scores(model, inputs, run, baselines, batch_size)

    def order(name: str) -> Int[np.ndarray, " n_components"]:
        return random_ranking(len(coef), random_seed) if name == "random" else rank_by(scores[name])

    rankings = {HEAD_ATTRIBUTION: rank_by(coef), **{name: order(name) for name in baselines}}
    curves = evaluate_rankings(
        [run.normalized], rankings, ks, batch_size=batch_size, progress=False
    )
    return scores, curves


def _baseline_scores(
    model, inputs: LVLMInputs, run: _Run, baselines: Sequence[str], batch_size: int
) -> dict[str, Float[np.ndarray, " n_components"]]:
    """One sample's score of each baseline that has one (``random`` has none), flat over heads."""
    scores = {}
    if any(b in ATTENTION_BASELINES for b in baselines):
        attention = attention_to_image(model, inputs)
        scores.update({b: attention[b][0].double().numpy().ravel() for b in ATTENTION_BASELINES})
    if "single_head" in baselines:
        n_components = model.n_layers * model.n_heads
        scores["single_head"] = single_head_effects(
            run.normalized, n_components, batch_size=batch_size, progress=False
        )
    return {name: scores[name] for name in baselines if name in scores}
