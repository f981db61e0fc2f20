"""The paper's findings, each tested on one study's numbers: one function per finding.

Each returns a :class:`~tl_lvlm.report.data.Finding` (a row of ``findings.json``): the
finding in README's wording, ``holds`` (True / False, or None with
``statistic["reason"]`` when it cannot be tested on these data), the numbers behind it and
a one-line ``summary`` that starts with README's "holds" / "does not hold" / "not tested".
The rules are fixed here and documented per function, so that two studies are judged alike:

==========================  ============================================================
finding                     holds when
==========================  ============================================================
:func:`regression_explains`  median held-out R² > 0.77 and ρ > 0.88 (the paper's figures)
:func:`fewer_heads`          head attribution reaches faithfulness > 0.8 and completeness
                             < 0.2 with fewer heads than every baseline ranking
:func:`mid_to_late_layers`   most of the top-10 heads sit in the second half of the layers
:func:`semantics_over_appearance`  same class / other style pairs are more alike (cosine)
                             than other class / same style pairs, permutation p < 0.05
:func:`text_before_image`    the question -> role/final knockout hurts in earlier layers
                             (effect-weighted) than the image -> role/final knockout
:func:`only_role_final_read_image`  over all layers, blocking the question from the image
                             keeps >= 0.8 of the image's effect, blocking role/final <= 0.2
:func:`object_and_background`  the object's patches and the background each hold at least
                             0.2 of the positive image-token attribution
:func:`task_specific`        two questions' top-10 heads overlap less than exchangeable
                             tasks would (paired permutation test, ``"pairs"``, p < 0.05)
:func:`seed_stability`       the top-10 heads of runs under different mask seeds share at
                             least half their heads, pair by pair on average
==========================  ============================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from jaxtyping import Float

from attribution import chance_overlap_pvalue, task_permutation_test, topk_set
from tl_lvlm.analysis.evaluation import C_THRESHOLD, F_THRESHOLD
from tl_lvlm.analysis.heads import HEAD_ATTRIBUTION
from tl_lvlm.flow import FlowSweep
from tl_lvlm.report.data import Finding
from tl_lvlm.study.flow_timing import (
    EFFECT_THRESHOLD,
    IMAGE_ROUTE,
    MIN_IMAGE_GAP,
    NO_IMAGE,
    ROLE_FINAL_ROUTE,
    TEXT_ROUTE,
    image_share,
    timing_summary,
)
from tl_lvlm.study.layers import layer_distribution
from tl_lvlm.study.similarity import (
    APPEARANCE,
    SEMANTIC,
    cosine_matrix,
    pair_kinds,
    semantic_permutation_test,
)

# The findings in README's wording ("Which of the paper's findings hold on this model").
REGRESSION = "The regression explains the ablations"
FEWER_HEADS = "Head attribution needs fewer heads than the baselines"
MID_TO_LATE = "Important heads sit in mid-to-late layers"
SEMANTICS = "Head selection follows semantics, not appearance"
TEXT_FIRST = "Text reaches role/final before the image"
ROLE_FINAL = "Only role/final tokens read the image"
OBJECT_BACKGROUND = "Image information lives in object and background tokens"
TASK_SPECIFIC = "Heads that carry the image are task-specific"
SEED_STABLE = "The top heads do not depend on the mask seed"

#: The paper's fit quality on LLaVA-1.5-7B (200 COCO samples).
PAPER_R2, PAPER_PEARSON = 0.77, 0.88
#: Heads counted as top by the layer, overlap and seed findings.
TOP_K = 10
#: Significance level of the permutation tests.
ALPHA = 0.05
#: Least share of the image's effect "kept", most share "removed" (as the heads-needed
#: thresholds).
KEPT, REMOVED = F_THRESHOLD, C_THRESHOLD
#: Least share of the positive image-token attribution that counts as "lives in".
MIN_SHARE = 0.2


def not_tested(finding: str, reason: str, n: int = 0, **statistic: Any) -> Finding:
    """A finding these data cannot test: ``holds`` None, the reason in the statistic."""
    return Finding(finding, None, {"reason": reason, **statistic}, n, f"not tested: {reason}")


def _verdict(holds: bool, yes: str, no: str) -> str:
    return f"holds: {yes}" if holds else f"does not hold: {no}"


def regression_explains(
    r2: Float[np.ndarray, " n"] | Sequence[float],
    pearson: Float[np.ndarray, " n"] | Sequence[float],
    *,
    min_r2: float = PAPER_R2,
    min_pearson: float = PAPER_PEARSON,
) -> Finding:
    """Held-out R² and Pearson ρ of the per-sample fits: holds when both medians pass."""
    r2, pearson = np.asarray(r2, np.float64), np.asarray(pearson, np.float64)
    if not len(r2):
        return not_tested(REGRESSION, "no sample was kept")
    stat = {
        "median_r2": float(np.median(r2)),
        "median_pearson": float(np.median(pearson)),
        "mean_r2": float(r2.mean()),
        "mean_pearson": float(pearson.mean()),
        "share_r2_above": float((r2 > min_r2).mean()),
        "min_r2": min_r2,
        "min_pearson": min_pearson,
    }
    holds = stat["median_r2"] > min_r2 and stat["median_pearson"] > min_pearson
    numbers = f"median R² {stat['median_r2']:.3f}, ρ {stat['median_pearson']:.3f}"
    return Finding(
        REGRESSION,
        holds,
        stat,
        len(r2),
        _verdict(holds, numbers, f"{numbers} (the paper: R² > {min_r2}, ρ > {min_pearson})"),
    )


def fewer_heads(heads_needed: Mapping[str, int | None], n_heads_total: int, n: int) -> Finding:
    """Heads needed per ranking (``HeadAttributionResult.heads_needed()``): holds when head
    attribution needs fewer than every baseline; a ranking that never reaches the thresholds
    counts as needing all ``n_heads_total`` heads and one more."""
    never = n_heads_total + 1
    baselines = {k: v for k, v in heads_needed.items() if k != HEAD_ATTRIBUTION}
    if HEAD_ATTRIBUTION not in heads_needed or not baselines:
        return not_tested(FEWER_HEADS, "no evaluation against the baselines", n)
    ours = heads_needed[HEAD_ATTRIBUTION]
    count = {k: never if v is None else v for k, v in heads_needed.items()}
    holds = all(count[HEAD_ATTRIBUTION] < count[k] for k in baselines)
    shown = ", ".join(f"{'not reached' if v is None else v} ({k})" for k, v in baselines.items())
    numbers = f"{'not reached' if ours is None else ours} of {n_heads_total} against {shown}"
    stat = {
        "heads_needed": dict(heads_needed),
        "n_heads_total": n_heads_total,
        "faithfulness_above": F_THRESHOLD,
        "completeness_below": C_THRESHOLD,
    }
    return Finding(FEWER_HEADS, holds, stat, n, _verdict(holds, numbers, numbers))


def mid_to_late_layers(
    mean: Float[np.ndarray, "n_layers n_heads"],
    per_sample: Float[np.ndarray, "n_samples n_layers n_heads"] | None = None,
    k: int = TOP_K,
) -> Finding:
    """:func:`~tl_lvlm.study.layers.layer_distribution`: holds when more than half of the
    top-``k`` heads of the mean map sit in layers ``n_layers // 2`` and up."""
    dist = layer_distribution(mean, per_sample, k)
    n_layers = len(dist["top_k_count_per_layer"])
    late = dist["top_k_count_second_half"]
    holds = late > k / 2
    mass = dist["positive_mass_share_second_half"]
    numbers = (
        f"{late} of the top-{k} heads are in layers {n_layers // 2}-{n_layers - 1}, with "
        f"{mass:.0%} of the positive attribution (mass-weighted depth "
        f"{dist['positive_mass_mean_depth']:.2f})"
    )
    n = 1 if per_sample is None else len(per_sample)
    return Finding(MID_TO_LATE, holds, dist, n, _verdict(holds, numbers, numbers))


def semantics_over_appearance(
    coef: Float[np.ndarray, "n ..."],
    classes: Sequence | np.ndarray,
    styles: Sequence | np.ndarray,
    *,
    n_permutations: int = 2000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> Finding:
    """Cosine of per-sample attributions (:mod:`tl_lvlm.study.similarity`): holds when
    same-class / other-style pairs are more alike than other-class / same-style pairs, with
    a label-permutation p below ``alpha``."""
    coef = np.asarray(coef, np.float64).reshape(len(coef), -1)
    cls = np.unique(np.asarray(classes), return_inverse=True)[1]
    style = np.unique(np.asarray(styles), return_inverse=True)[1]
    sim = cosine_matrix(coef)
    try:
        test = semantic_permutation_test(sim, cls, style, n_permutations, seed)
    except ValueError as err:
        return not_tested(SEMANTICS, str(err), len(coef))
    kinds = pair_kinds(cls, style, np.arange(len(coef)))
    semantic, appearance = (float(sim[kinds[k]].mean()) for k in (SEMANTIC, APPEARANCE))
    holds = test["difference"] > 0 and test["p_value"] < alpha
    stat = {
        "measure": "cosine",
        SEMANTIC: semantic,
        APPEARANCE: appearance,
        f"{SEMANTIC} pairs": int(kinds[SEMANTIC].sum()),
        f"{APPEARANCE} pairs": int(kinds[APPEARANCE].sum()),
        **test,
        "alpha": alpha,
    }
    numbers = (
        f"same class / other style {semantic:.3f} vs other class / same style "
        f"{appearance:.3f}, p = {test['p_value']:.2g}"
    )
    return Finding(SEMANTICS, holds, stat, len(coef), _verdict(holds, numbers, numbers))


def text_before_image(text_flow: FlowSweep, image_flow: FlowSweep) -> Finding:
    """Windowed sweeps of the paper's two experiments: holds when blocking the question from
    role/final hurts earlier (:func:`~tl_lvlm.study.flow_timing.flow_timing`'s
    effect-weighted layer) than blocking the image from them. Not tested when either
    knockout never lowers the relative logit by :data:`EFFECT_THRESHOLD` (an answer that
    needs no question, or no image)."""
    n = len(text_flow.kept)
    if not n or not len(image_flow.kept):
        return not_tested(TEXT_FIRST, "every sample was excluded from the sweeps")
    timing = timing_summary(
        text_flow.curves()[TEXT_ROUTE],
        image_flow.curves()[IMAGE_ROUTE],
        text_flow.starts,
        text_flow.window,
    )
    stat = {"window": text_flow.window, **timing}
    for key, what in (("question_to_role_final", "question"), ("image_to_role_final", "image")):
        effect = timing[key]["max_effect"]
        if effect < EFFECT_THRESHOLD:
            return not_tested(
                TEXT_FIRST,
                f"blocking the {what} from role/final lowers the logit by at most {effect:.3f} "
                f"(< {EFFECT_THRESHOLD}) in any {text_flow.window}-layer window: this answer "
                f"does not need the {what} there",
                n,
                **stat,
            )
    text = timing["question_to_role_final"]["weighted_mean_layer"]
    image = timing["image_to_role_final"]["weighted_mean_layer"]
    holds = bool(timing["text_before_image"])
    numbers = (
        f"effect-weighted layer {text:.1f} (question -> role/final) vs {image:.1f} "
        f"(image -> role/final), {text_flow.window}-layer windows"
    )
    return Finding(TEXT_FIRST, holds, stat, n, _verdict(holds, numbers, numbers))


def only_role_final_read_image(all_layers: FlowSweep) -> Finding:
    """The ``image_flow`` knockout in every layer at once (one window): holds when blocking
    the question from the image keeps at least :data:`KEPT` of the image's effect and
    blocking role/final keeps at most :data:`REMOVED`
    (:func:`~tl_lvlm.study.flow_timing.image_share`, samples whose image moves the logit by
    :data:`~tl_lvlm.study.flow_timing.MIN_IMAGE_GAP` or more)."""
    if len(all_layers.starts) != 1:
        raise ValueError(
            f"only_role_final_read_image takes the sweep over all layers at once (window = "
            f"n_layers, one window), got {len(all_layers.starts)} windows"
        )
    shares = image_share(all_layers, all_layers.knocked[NO_IMAGE][0])
    n = shares[NO_IMAGE].shape[1]
    if not n:
        return not_tested(
            ROLE_FINAL,
            f"no sample's logit moves by {MIN_IMAGE_GAP} or more when the image is blocked "
            "from every text token",
        )
    question_blocked = float(shares[ROLE_FINAL_ROUTE].mean())
    role_final_blocked = float(shares[IMAGE_ROUTE].mean())
    holds = question_blocked >= KEPT and role_final_blocked <= REMOVED
    stat = {
        "image_share_kept_question_blocked": question_blocked,
        "image_share_kept_role_final_blocked": role_final_blocked,
        "relative_logit": {name: float(c[0]) for name, c in all_layers.curves().items()},
        "kept_at_least": KEPT,
        "removed_at_most": REMOVED,
    }
    numbers = (
        f"blocking the question from the image keeps {question_blocked:.3f} of its effect, "
        f"blocking role/final keeps {role_final_blocked:.3f}"
    )
    return Finding(ROLE_FINAL, holds, stat, n, _verdict(holds, numbers, numbers))


def object_and_background(
    object_share: Float[np.ndarray, " n"] | Sequence[float],
    object_area: Float[np.ndarray, " n"] | Sequence[float],
    *,
    min_share: float = MIN_SHARE,
) -> Finding:
    """Per image, the object's share of the positive image-token attribution and of the
    patches (:class:`~tl_lvlm.analysis.image_tokens.ObjectMass`): holds when, on average,
    the object and the background each hold at least ``min_share``."""
    share = np.asarray(object_share, np.float64)
    area = np.asarray(object_area, np.float64)
    finite = np.isfinite(share)
    share, area = share[finite], area[finite]
    if not len(share):
        return not_tested(OBJECT_BACKGROUND, "no image has an object mask and a positive map")
    obj, background = float(share.mean()), float(1 - share.mean())
    holds = obj >= min_share and background >= min_share
    stat = {
        "object_share": obj,
        "background_share": background,
        "object_area": float(area.mean()),
        "object_share_over_area": float((share / area).mean()),
        "min_share": min_share,
    }
    numbers = (
        f"the background holds {background:.0%} of the positive attribution, the object "
        f"{obj:.0%} on {stat['object_area']:.0%} of the area"
    )
    return Finding(OBJECT_BACKGROUND, holds, stat, len(share), _verdict(holds, numbers, numbers))


def task_specific(
    coef_a: Float[np.ndarray, "n n_layers n_heads"],
    coef_b: Float[np.ndarray, "n n_layers n_heads"],
    *,
    tasks: tuple[str, str] = ("a", "b"),
    k: int = TOP_K,
    n_permutations: int = 10_000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> Finding:
    """Two questions' attributions of the same samples (row i = sample i in both): the top-k
    overlap of their mean maps, its chance p (:func:`attribution.chance_overlap_pvalue`) and
    the paired permutation tests (:func:`attribution.task_permutation_test`, both
    statistics). Holds when the ``"pairs"`` p is below ``alpha``: fewer shared heads than
    exchangeable tasks give (the ``"mean"`` statistic is blind to clean, distinct maps)."""
    coef_a, coef_b = np.asarray(coef_a, np.float64), np.asarray(coef_b, np.float64)
    n = len(coef_a)
    if n < 2:
        return not_tested(
            TASK_SPECIFIC, f"{n} sample(s) kept by both questions; the test needs 2", n
        )
    mean_a, mean_b = coef_a.mean(0), coef_b.mean(0)
    n_heads = mean_a.shape[-1]
    shared = sorted(topk_set(mean_a, k) & topk_set(mean_b, k))
    overlap = len(shared)
    test = task_permutation_test(coef_a, coef_b, k, n_permutations, seed, statistic="mean")
    pairs = task_permutation_test(coef_a, coef_b, k, n_permutations, seed, statistic="pairs")
    stat = {
        "tasks": list(tasks),
        "k": k,
        "overlap": overlap,
        "jaccard": overlap / (2 * k - overlap),
        "shared_heads": [{"layer": j // n_heads, "head": j % n_heads} for j in shared],
        "chance_p": chance_overlap_pvalue(overlap, mean_a.size, k),
        "permutation_p": test.p_value,
        "permutation_null_mean": float(test.null.mean()),
        "pairs_overlap": pairs.observed,
        "permutation_p_pairs": pairs.p_value,
        "permutation_pairs_null_mean": float(pairs.null.mean()),
        "pearson": float(np.corrcoef(mean_a.ravel(), mean_b.ravel())[0, 1]),
        "alpha": alpha,
    }
    holds = pairs.p_value < alpha
    numbers = (
        f"{tasks[0]!r} and {tasks[1]!r} share {overlap} of their top-{k} heads (pairs permutation "
        f"p {pairs.p_value:.2g}, chance p {stat['chance_p']:.2g})"
    )
    return Finding(TASK_SPECIFIC, holds, stat, n, _verdict(holds, numbers, numbers))


def seed_stability(
    means: Mapping[int, Float[np.ndarray, "n_layers n_heads"]], n: int, k: int = TOP_K
) -> Finding:
    """Mean attribution maps of one data set under different mask seeds (seed -> map): the
    top-``k`` overlap and Jaccard index of every pair of seeds; holds when the mean pairwise
    overlap is at least ``k / 2``."""
    if len(means) < 2:
        return not_tested(SEED_STABLE, "fewer than two seeds", n)
    tops = {seed: topk_set(mean, k) for seed, mean in means.items()}
    size = next(iter(means.values())).size
    pairs = []
    for a, b in combinations(tops, 2):
        overlap = len(tops[a] & tops[b])
        pairs.append(
            {
                "seeds": [a, b],
                "overlap": overlap,
                "jaccard": overlap / (2 * k - overlap),
                "chance_p": chance_overlap_pvalue(overlap, size, k),
            }
        )
    mean_overlap = float(np.mean([p["overlap"] for p in pairs]))
    mean_jaccard = float(np.mean([p["jaccard"] for p in pairs]))
    holds = mean_overlap >= k / 2
    stat = {
        "seeds": list(means),
        "k": k,
        "mean_overlap": mean_overlap,
        "mean_jaccard": mean_jaccard,
        "pairs": pairs,
    }
    numbers = (
        f"the top-{k} heads of {len(means)} mask seeds share {mean_overlap:.1f} heads per pair "
        f"(mean Jaccard {mean_jaccard:.2f})"
    )
    return Finding(SEED_STABLE, holds, stat, n, _verdict(holds, numbers, numbers))
