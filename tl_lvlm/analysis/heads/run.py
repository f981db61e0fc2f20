"""The head attribution driver: each sample from its engine to its fit and curves."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from attribution import FitResult, collect, default_ks, fit, shard_indices
from attribution.own_checks import checks_own_arguments
from attribution.store import OutputStore
from tl_lvlm._utils.fingerprint import tensor_sha256
from tl_lvlm.ablation import ImageKVBaseline
from tl_lvlm.ablation.baseline import resolve_baseline_with_id
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.metric import Metric
from tl_lvlm.ablation.normalization import LogitNormalization
from tl_lvlm.analysis.evaluation import Evaluation
from tl_lvlm.analysis.heads.config import (
    RESULTS_KIND,
    STORE_KEYS,
    HeadAttributionConfig,
    n_drawn,
    run_masks,
)
from tl_lvlm.analysis.heads.convergence import auto_rounds, converged
from tl_lvlm.analysis.heads.gradient import PASSES_PER_MASK, gradient_attribution
from tl_lvlm.analysis.heads.labels import Answer, answer_token_id, answers_label
from tl_lvlm.analysis.heads.rankings import HEAD_ATTRIBUTION, evaluate_sample, sample_seed
from tl_lvlm.analysis.heads.result import ExcludedSample, HeadAttributionResult, _no_label
from tl_lvlm.analysis.heads.samples import Samples, per_sample
from tl_lvlm.analysis.heads.store import check_run, sample_store
from tl_lvlm.inputs import LVLMInputs


@checks_own_arguments
def head_attribution(
    model,
    samples: Sequence[tuple] | LVLMInputs | Any,
    config: HeadAttributionConfig | None = None,
    *,
    baseline: Literal["mean", "zero"] | ImageKVBaseline = "mean",
    target: Answer | Sequence[Answer | None] | None = None,
    labels: Sequence[Answer | None] | None = None,
    foil: Answer | Sequence[Answer | None] | None = None,
    reference: Sequence | LVLMInputs | None = None,
    store_dir: str | os.PathLike | None = None,
    shard: int | None = None,
    n_shards: int | None = None,
    progress: bool = True,
    on_sample_done: Callable[[int, int], None] | None = None,
    question: str | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    image_size: int | tuple[int, int] | None = None,
    **settings: Any,
) -> HeadAttributionResult:
    """Attribute each sample's target logit to the attention heads reading the image.

    The run's settings are one :class:`HeadAttributionConfig` (``config``), with any of its
    fields also accepted as a keyword argument (``n_masks=4000``, ``p_ablate=0.75``, ...),
    which replaces the field of ``config``. The rest are this call's data and plumbing.

    Args:
        model: a :class:`~tl_lvlm.HookedLVLM`.
        samples: ``[(image, question), ...]`` or ``[(image, question, label), ...]``
            (PIL images or ``HxWx3`` arrays), a ``datasets.Dataset`` with an image and a
            label column (asked ``question``), or an :class:`~tl_lvlm.LVLMInputs` batch
            from ``model.prepare``. Sample ids are the positions in this sequence.
        config: the settings; default :class:`HeadAttributionConfig`'s defaults (the paper's).
        n_masks: random masks per sample (the paper: 10,000); at least
            ``n_layers * n_heads + 1``. ``"auto"``: masks in rounds until the sample's fit
            has converged, at most 10,000 (criterion in
            :mod:`tl_lvlm.analysis.heads.convergence`); ``n_masks_used`` says how many.
        p_ablate: probability that a head is ablated in a mask, in (0, 1).
        baseline: ``"mean"`` (image K/V averaged over ``reference``), ``"zero"``, or a
            precomputed :class:`~tl_lvlm.ablation.ImageKVBaseline`
            (:func:`~tl_lvlm.analysis.heads.resolve_baseline`).
        target: token whose logit is attributed, for every sample (an id or a one-token
            word, see :func:`answer_token_id`) or one per sample (None = default).
            Default: the label, else the model's greedy answer.
        labels: expected answer per sample (id or one-token word; None = unknown); with
            tuple samples, give labels in the tuples instead. A label of several words
            (``"traffic light"``) is attributed through its first token and must be the
            model's whole greedy answer (:func:`~tl_lvlm.analysis.heads.label_tokens`).
            Samples answered otherwise are excluded as ``"wrong_answer"``.
        metric: what is attributed of the final-position logits: ``"logit"`` (the target's,
            default), ``"logit_diff"`` (target minus ``foil``), ``"logprob"``, or a callable
            ``[batch, vocab] -> [batch]`` on the fp32 logits (:mod:`tl_lvlm.ablation.metric`).
            Every normalization uses it: clean and all-ablated values, ``min_logit_gap`` (in
            its units), ``y`` and the curves.
        foil: with ``metric="logit_diff"``, the token subtracted from the target: one for
            every sample or one per sample, an id or a one-token word as ``target``.
        reference: images (or an LVLMInputs batch) whose mean image K/V is the
            ``"mean"`` baseline, prompted with the first sample's question. Default: all
            the samples' images (all shards', so that every shard uses one baseline);
            fewer than 16 images warn.
        scope: ``"text"`` (ablated image K/V seen by text queries only) or ``"all"``.
        min_logit_gap: samples with ``clean - all-ablated`` target logit below this are
            excluded as ``"small_gap"`` (the normalization multiplies logit noise by
            ``1 / gap``; a negative gap means the image lowers the target).
        alpha, l1_ratio, holdout: passed to :func:`attribution.fit`.
        seed: seeds the masks, the fit's holdout and the random rankings.
        batch_size: masks per engine call; None = the engine's
            :meth:`~tl_lvlm.ablation.engine.AblationEngine.auto_batch_size` for each sample.
        store_dir: keep each sample's raw target logits in ``store_dir/sample-{id}``
            (:mod:`tl_lvlm.analysis.heads.store`): an interrupted run resumes there, a
            run with more masks extends it, and a run of another configuration is
            refused before anything is written.
        shard, n_shards: run only this shard's block of samples
            (:func:`attribution.shard_indices`; default from torchrun/SLURM variables).
        evaluate: score the competing rankings and measure faithfulness / completeness.
        compare_with: which of :data:`tl_lvlm.analysis.competing.BASELINES` to compare
            against (``baselines=`` still works, with a DeprecationWarning).
        ks: numbers of top heads for the curves; default :func:`attribution.default_ks`.
        progress: show progress bars.
        on_sample_done: called as ``on_sample_done(n_done, n_total)`` after each of this
            shard's samples is finished (kept or excluded).
        question: the question asked about every image of a ``datasets.Dataset``.
        image_column, label_column: a dataset's columns of images (a ``datasets.Image``
            feature) and labels (a ``ClassLabel``, or strings; None = unlabelled).
        image_size: resize every image (samples and reference images) to ``W x H`` (an
            int: a square) before it is prepared: one image geometry for a set of mixed
            sizes, instead of the default per-geometry mean baseline. None = as given.
        method: ``"regression"`` (ElasticNet over ``n_masks`` masks, the paper's method) or
            ``"gradient"``: each head's coefficient is the gradient of ``y`` with respect to
            a continuous image-K/V gate of that head, averaged over ``n_gradient_masks``
            random masks (:mod:`tl_lvlm.analysis.heads.gradient`; scope ``"text"`` only,
            no ``store_dir``; ``n_masks``, ``alpha``, ``l1_ratio`` and ``holdout`` are
            unused, and the config records ``n_masks = n_gradient_masks``, ``holdout = 0``).
            ``config["passes_per_mask"]`` and :attr:`HeadAttributionResult.passes_used`
            count the passes (a backward pass counts as one).
        n_gradient_masks: masks whose gradients ``method="gradient"`` averages (64-256
            is typical); the first masks of the regression's sequence for ``seed``.

    Raises:
        TypeError: samples that are neither (image, question[, label]) tuples nor
            LVLMInputs; a label/target that is neither an int nor a string.
        ValueError: an argument out of range, a label that is not one token, a store of
            another configuration, ``method="gradient"`` with scope ``"all"`` or a
            ``store_dir`` (each named in the message).
        NotImplementedError: ``method="gradient"`` on a family that refuses the engine.
    """
    cfg = HeadAttributionConfig.build(config, **settings)
    cfg.check_model(model)
    if cfg.method == "gradient" and store_dir is not None:
        raise ValueError(
            "store_dir keeps the regression's per-mask logits; method='gradient' stores "
            "nothing to resume (pass store_dir=None)"
        )
    gradient = cfg.method == "gradient"
    n_components = model.n_layers * model.n_heads
    prepared = Samples.parse(
        model, samples, labels, question=question, image_column=image_column,
        label_column=label_column, image_size=image_size,
    )  # fmt: skip
    # Resolved up front, so that a bad label or target fails before any model run.
    template = prepared.template
    wholes = prepared.label_tokens()
    label_ids = [None if a is None else a[0] for a in wholes]

    def token_ids(answers: list) -> list[int | None]:
        return [None if a is None else answer_token_id(model, a, template) for a in answers]

    target_ids = token_ids(per_sample(target, len(prepared), "target"))
    metric = cfg.resolved_metric
    given_ids = [t if t is not None else lab for t, lab in zip(target_ids, label_ids, strict=True)]
    foil_ids = _foil_ids(metric, token_ids(per_sample(foil, len(prepared), "foil")), given_ids)
    ks = np.asarray(cfg.ks if cfg.ks is not None else default_ks(n_components), dtype=np.int64)

    ids = shard_indices(len(prepared), shard, n_shards)
    mean_over_samples = isinstance(baseline, str) and baseline == "mean" and reference is None
    kv_baseline, baseline_id = resolve_baseline_with_id(
        model,
        baseline,
        prepared.reference(reference),
        prepared.all_images() if mean_over_samples else prepared.inputs(0),
    )
    config = {
        "kind": RESULTS_KIND,
        "model": str(getattr(model.hf_model.config, "_name_or_path", "")),
        "n_layers": model.n_layers,
        "n_heads": model.n_heads,
        "n_samples": len(prepared),
        "baseline": baseline_id,
        "template": template,
        "passes_per_mask": PASSES_PER_MASK[cfg.method],
        **cfg.result_settings(),
        # A gradient run uses its n_gradient_masks and holds out nothing.
        "n_masks": cfg.n_gradient_masks if gradient else cfg.n_masks,
        "holdout": 0.0 if gradient else cfg.holdout,
        "foils": foil_ids if metric.needs_foil else None,
        "rankings": [HEAD_ATTRIBUTION, *cfg.compare_with] if cfg.evaluate else [],
        "ks": ks.tolist() if cfg.evaluate else [],
    }
    run_config = {key: config[key] for key in STORE_KEYS}
    if store_dir is not None:
        check_run(store_dir, run_config)
    masks = run_masks(config)
    flat_masks = masks.reshape(len(masks), n_components)
    rounds = auto_rounds(n_components) if cfg.n_masks == "auto" else [len(masks)]

    kept: list[_Kept] = []
    excluded: list[ExcludedSample] = []
    curves: list[Evaluation] = []
    for done, sample_id in enumerate(
        tqdm(ids, desc="head attribution", unit="sample", disable=not progress), start=1
    ):
        inputs = prepared.inputs(sample_id)
        label = label_ids[sample_id]
        given = target_ids[sample_id] if target_ids[sample_id] is not None else label
        foil_id = foil_ids[sample_id]
        if given is None and foil_id is not None:
            # The greedy answer is the target: a sample that answers its foil has nothing to
            # attribute (target - foil = 0), found before its engine is built.
            with torch.no_grad():
                answer = int(model.final_logits(inputs).argmax())
            if answer == foil_id:
                excluded.append(
                    ExcludedSample(sample_id, "foil_is_target", answer, answer, label, 0.0, 0.0)
                )
                if on_sample_done is not None:
                    on_sample_done(done, len(ids))
                continue
        engine = AblationEngine(
            model, inputs, kv_baseline, target=given, metric=metric, foil=foil_id,
            scope=cfg.scope,
        )  # fmt: skip
        answer = int(engine.clean_logits.argmax())
        run = _SampleRun(engine, model.n_layers, model.n_heads, cfg.batch_size)
        norm = run.norm
        reason = None
        # A multi-word label must be the whole answer, not its first token alone.
        whole = wholes[sample_id]
        if label is not None and (
            label != answer or (len(whole) > 1 and not answers_label(model, inputs, whole))
        ):
            reason = "wrong_answer"
        elif norm.too_small(cfg.min_logit_gap):
            reason = "small_gap"
        if reason is not None:
            excluded.append(
                ExcludedSample(
                    sample_id, reason, answer, engine.target, label, norm.clean, norm.ablated
                )
            )
        else:
            # What the collected logits depend on, so that a store is never reused for
            # another sample or run.
            meta = {
                **run_config,
                "sample": sample_id,
                "target": engine.target,
                "foil": engine.foil,
                "inputs_sha256": tensor_sha256(inputs.input_ids, inputs.pixel_values),
            }
            if gradient:
                y, result = gradient_attribution(
                    engine,
                    norm,
                    flat_masks,
                    cfg.batch_size or engine.auto_batch_size(backward=True),
                    progress=progress,
                    desc=f"sample {sample_id}",
                )
            else:
                y, result = _collect_and_fit(
                    run,
                    flat_masks,
                    rounds,
                    None if store_dir is None else sample_store(store_dir, sample_id),
                    meta,
                    cfg.fit_kwargs(),
                    progress=progress,
                    desc=f"sample {sample_id}",
                )
            sample_scores = {}
            if cfg.evaluate:
                # Evaluated now, while the engine exists: engines hold the prefix K/V cache,
                # too big to keep for every sample of a large model.
                sample_scores, sample_curves = evaluate_sample(
                    model, inputs, run.normalized, result.coef, cfg.compare_with, ks,
                    sample_seed(cfg.seed, sample_id), run.batch_size,
                )  # fmt: skip
                curves.append(sample_curves)
            kept.append(
                _Kept(sample_id, answer, engine.target, label, norm, y, result, sample_scores)
            )
        # Free this sample's prefix K/V before the next engine is built (peak memory).
        del engine, run
        if on_sample_done is not None:
            on_sample_done(done, len(ids))

    n_total = n_drawn(config)
    y = np.full((len(kept), n_total), np.nan)
    for row, k in zip(y, kept, strict=True):
        row[: len(k.y)] = k.y
    shape = (len(kept), model.n_layers, model.n_heads)
    scores = {
        name: np.reshape([k.scores[name] for k in kept], shape)
        for name in cfg.compare_with
        if cfg.evaluate and name != "random"
    }
    return HeadAttributionResult(
        sample_ids=np.array([k.sample_id for k in kept], dtype=np.int64),
        fits=[k.fit for k in kept],
        answers=np.array([k.answer for k in kept], dtype=np.int64),
        labels=np.array([_no_label(k.label) for k in kept], dtype=np.int64),
        targets=np.array([k.target for k in kept], dtype=np.int64),
        clean_logit=np.array([k.norm.clean for k in kept]),
        ablated_logit=np.array([k.norm.ablated for k in kept]),
        n_masks_used=np.array([len(k.y) for k in kept], dtype=np.int64),
        y=y,
        masks=masks,
        excluded=excluded,
        scores=scores,
        evaluation=Evaluation.concatenate(curves, ks, config["rankings"]) if cfg.evaluate else None,
        config=config,
    )


def _foil_ids(
    metric: Metric, foils: list[int | None], targets: list[int | None]
) -> list[int | None]:
    """Each sample's foil, checked against the metric and the sample's given target.

    Raises:
        ValueError: foils without ``metric="logit_diff"``, a sample without one with it, or
            a foil equal to the sample's target or label (naming the sample).
    """
    if not metric.needs_foil or all(f is None for f in foils):
        metric.check_foil(next((f for f in foils if f is not None), None))
    for i, (foil, target) in enumerate(zip(foils, targets, strict=True)):
        try:
            metric.check_foil(foil, target)
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
    return foils


def _collect_and_fit(
    run: _SampleRun,
    masks: Bool[np.ndarray, "n_masks n_components"],
    rounds: list[int],
    store: Path | None,
    meta: dict,
    fit_kwargs: dict,
    *,
    progress: bool,
    desc: str,
) -> tuple[Float[np.ndarray, " n_used"], FitResult]:
    """One sample's normalized logits and fit on the first ``rounds[-1]`` masks, or on the
    first round whose fit has converged (:mod:`~tl_lvlm.analysis.heads.convergence`)."""
    previous = None
    for n in rounds:
        logits = collect(
            run.logits,
            masks[:n],
            batch_size=run.batch_size,
            store=store,
            meta=meta,
            progress=progress,
            desc=desc,
        )
        y = run.norm(logits)
        result = fit(masks[:n], y, **fit_kwargs)
        if previous is not None and converged(previous, result):
            break
        previous = result
    if store is not None:
        OutputStore.open(store, masks.shape[1], meta).mark_complete(n)
    return y, result


class _SampleRun:
    """One sample's engine on flat numpy masks: raw and normalized target logits."""

    def __init__(self, engine: AblationEngine, n_layers: int, n_heads: int, batch_size):
        self.engine = engine
        self.shape = (n_layers, n_heads)
        self.batch_size = int(batch_size or engine.auto_batch_size())
        self.norm = LogitNormalization.measure(engine.clean_value, self.logits, n_layers * n_heads)

    def logits(self, masks: Bool[np.ndarray, "b n_components"]) -> Float[np.ndarray, " b"]:
        keep = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, *self.shape)
        return self.engine.run(keep, self.batch_size, progress=False).double().numpy()

    def normalized(self, masks: Bool[np.ndarray, "b n_components"]) -> Float[np.ndarray, " b"]:
        return self.norm(self.logits(masks))


@dataclass
class _Kept:
    """What a kept sample contributes to the result."""

    sample_id: int
    answer: int
    target: int
    label: int | None
    norm: LogitNormalization
    y: np.ndarray
    fit: FitResult
    scores: dict[str, np.ndarray]
