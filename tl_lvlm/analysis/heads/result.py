"""What head attribution returns: kept samples' fits, excluded samples, the evaluation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jaxtyping import Bool, Float, Int
from numpy.typing import ArrayLike

from attribution import (
    Aggregate,
    FitResult,
    Results,
    aggregate,
    load_results,
    merge_shards,
    rank_by,
    save_results,
)
from tl_lvlm.ablation.baseline import REFERENCE_HINT
from tl_lvlm.analysis.evaluation import Evaluation
from tl_lvlm.analysis.heads.config import RESULTS_KIND, n_drawn, run_masks

#: Why a sample was left out; index = the ``status`` code stored in results files (0 = kept).
STATUS = ("kept", "wrong_answer", "small_gap", "foil_is_target")


@dataclass
class ExcludedSample:
    """A sample left out of the attribution, and why.

    Attributes:
        sample_id: index of the sample in the input.
        reason: ``"wrong_answer"`` (greedy answer is not the label), ``"small_gap"``
            (clean and all-ablated target logits closer than ``min_logit_gap``) or
            ``"foil_is_target"`` (``metric="logit_diff"``: the greedy answer, attributed for
            want of a target, is the sample's foil, so the difference is 0).
        answer: token id of the model's greedy answer.
        target: token id whose logit would have been attributed.
        label: token id of the expected answer, or None.
        clean_logit: target logit with every head kept.
        ablated_logit: target logit with every head ablated.
    """

    sample_id: int
    reason: Literal["wrong_answer", "small_gap", "foil_is_target"]
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
        if self.reason == "foil_is_target":
            return (
                f"sample {self.sample_id} (foil_is_target): the model answers {tok(self.answer)}, "
                "which is the sample's foil, so target - foil is 0; give a target (or label) or "
                "another foil"
            )
        gap = self.clean_logit - self.ablated_logit
        return (
            f"sample {self.sample_id} (small_gap): clean - all-ablated logit of "
            f"{tok(self.target)} is {gap:.4g} "
            f"(clean {self.clean_logit:.4g}, ablated {self.ablated_logit:.4g}), too small to "
            f"normalize by. With a mean baseline over few images (each close to it), "
            f"{REFERENCE_HINT}; or use baseline='zero' (--baseline zero), or lower "
            "min_logit_gap (--min-logit-gap) if the image barely matters to this answer"
        )


@dataclass
class HeadAttributionResult:
    """Head attribution of the kept samples, the excluded ones, and the evaluation.

    Row i of every per-sample array belongs to kept sample ``sample_ids[i]``.

    Attributes:
        sample_ids: int64 ``[n_kept]`` indices of the kept samples in the input.
        fits: one :class:`attribution.FitResult` per kept sample (``coef`` flat over
            heads, index ``layer * n_heads + head``; with ``method="gradient"`` the mean
            gate gradients, see :mod:`tl_lvlm.analysis.heads.gradient`).
        answers: int64 ``[n_kept]`` token id of the model's greedy answer.
        labels: int64 ``[n_kept]`` token id of the expected answer (-1 = no label).
        targets: int64 ``[n_kept]`` token id whose logit was attributed.
        clean_logit: ``[n_kept]`` target logit with every head kept (the value of the run's
            metric, ``config["metric"]``; the target logit by default).
        ablated_logit: ``[n_kept]`` target logit (metric) with every head ablated.
        n_masks_used: int64 ``[n_kept]`` masks each sample's fit used: ``n_masks``, or
            fewer with ``n_masks="auto"`` (the first ``n_masks_used`` rows of ``masks``).
        y: ``[n_kept, n_masks]`` normalized target logit of every mask (NaN after a
            sample's ``n_masks_used``).
        masks: bool ``[n_masks, n_layers, n_heads]`` (True = kept), shared by all samples
            (10,000 with ``n_masks="auto"``, of which each sample uses a prefix).
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
    n_masks_used: Int[np.ndarray, " n_kept"]
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
    def passes_used(self) -> Int[np.ndarray, " n_kept"]:
        """Suffix passes each kept sample's attribution used, a backward pass counted as one.

        ``n_masks_used * passes_per_mask + 1``: one forward per mask for the regression,
        a forward and a backward for ``method="gradient"``, and the all-ablated forward of
        the normalization. The clean run, the prefix and the evaluation curves cost the
        same for both methods and are not counted.
        """
        return self.n_masks_used * int(self.config.get("passes_per_mask", 1)) + 1

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
        (index into :data:`STATUS`), ``answer``, ``target``, ``label`` (-1 = none),
        ``clean_logit``, ``ablated_logit``, ``coef`` ``[n, n_layers, n_heads]``,
        ``intercept``, ``r2``, ``pearson``, ``n_masks_used`` (0 = excluded), ``y``
        ``[n, n_masks]``, ``y_test`` / ``y_pred`` ``[n, n_test]`` (NaN after a sample's
        own held-out count), ``score.{baseline}`` ``[n, n_layers, n_heads]``,
        ``faithfulness.{ranking}`` / ``completeness.{ranking}`` ``[n, n_points]``; the
        run configuration (with ``ks``) is the meta. Shards of one run merge with
        :meth:`merge`.
        """
        n_kept, n_excl = len(self.sample_ids), len(self.excluded)
        excl = self.excluded

        def rows(kept: ArrayLike, dtype=np.float64) -> np.ndarray:
            kept = np.asarray(kept, dtype=dtype).reshape((n_kept, *np.shape(kept)[1:]))
            pad = np.full((n_excl, *kept.shape[1:]), np.nan, dtype=dtype)
            return np.concatenate([kept, pad])

        # The most held-out masks a sample can have, fixed by the config so that every
        # shard's arrays have the same row shape (also when it kept no sample).
        n_test = _n_test(self.config["holdout"], len(self.masks))

        def held_out(values: list[np.ndarray]) -> np.ndarray:
            padded = np.full((n_kept, n_test), np.nan)
            for row, v in zip(padded, values, strict=True):
                row[: len(v)] = v
            return rows(padded)

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
            "n_masks_used": np.array([*self.n_masks_used, *[0] * n_excl], np.int64),
            "y": rows(self.y.reshape(n_kept, len(self.masks))),
            "y_test": held_out([f.y_test for f in self.fits]),
            "y_pred": held_out([f.y_pred for f in self.fits]),
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
        used = a["n_masks_used"] if "n_masks_used" in a else np.full(kept.shape, n_drawn(config))

        def fit_of(i: int | np.integer) -> FitResult:
            n_test = _n_test(config["holdout"], int(used[i]))
            return FitResult(
                coef=a["coef"][i].ravel(),
                intercept=float(a["intercept"][i]),
                r2=float(a["r2"][i]),
                pearson=float(a["pearson"][i]),
                n_train=int(used[i]) - n_test,
                n_test=n_test,
                y_test=a["y_test"][i, :n_test],
                y_pred=a["y_pred"][i, :n_test],
            )

        fits = [fit_of(i) for i in np.flatnonzero(kept)]
        evaluation = None
        if config.get("evaluate", config.get("evaluated")):  # "evaluated" before 0.2
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
            n_masks_used=used[kept].astype(np.int64),
            y=a["y"][kept],
            masks=run_masks(config),
            excluded=excluded,
            scores={
                k.removeprefix("score."): v[kept] for k, v in a.items() if k.startswith("score.")
            },
            evaluation=evaluation,
            config=config,
        )


def _n_test(holdout: float, n_masks: int) -> int:
    """Held-out masks of a fit on ``n_masks`` (as :func:`attribution.fit` computes it)."""
    return int(round(holdout * n_masks))


def _no_label(label: int | None) -> int:
    return -1 if label is None else label
