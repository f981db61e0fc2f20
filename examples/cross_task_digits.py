"""Across tasks: do the four questions about one digit image use the same heads?

The bundled model answers four questions about the same rendered digit
(:data:`tl_lvlm.zoo.questions.TASKS`): the digit's word (``object``), the ink colour
(``ink``), the background colour (``background``) and ``even`` / ``odd`` (``parity``).
Here ``--n-per-digit`` held-out test scans of every class are rendered in the
``coloured`` style (random size, position and colours: every question has something to
read), and each task gets its own head attribution of the same images: the task's
canonical question, its correct answer as the label, ``--n-masks`` random ablations of
the heads' image keys/values (each head ablated with probability 0.75) and one baseline
for all tasks, the mean image K/V of ``--n-reference`` training images in the
``coloured`` style (image K/V only depend on the text before the image, so the question
does not change it, and differences between tasks never come from the baseline).
Samples a task's model answers wrongly are excluded from that task; two tasks are
compared on the samples kept in both.

Per task (``results.json`` ``tasks``): samples kept, held-out R² and Pearson ρ of the
fits, the top ``--top-k`` heads of the mean attribution and their layers. Per pair of
tasks (``pairs``), on the common samples:

- ``overlap``: how many of the top-k heads of the two mean maps are shared, and
  ``jaccard`` = overlap / (2k - overlap); ``pearson``: correlation of the two mean maps
  over all heads;
- ``chance_p``: P(two random k-subsets of the heads share >= overlap) (hypergeometric).
  Small = the tasks share more top heads than chance: common circuitry (e.g. heads that
  carry the image to the answer whatever is asked);
- ``permutation_p`` (statistic ``"mean"``, the overlap above) and ``permutation_p_pairs``
  (statistic ``"pairs"``: a sample's top-k heads for one task against another sample's
  for the other, averaged): null hypothesis = the heads do not depend on the task, so each
  sample's two maps are exchangeable; random swaps of them on a random subset of samples
  give the null distribution (:func:`attribution.task_permutation_test`). Small = fewer
  shared heads than exchangeable tasks would give: task-specific heads. The ``"mean"``
  p-value can stay large for clean, clearly different maps (see that function's
  docstring); ``"pairs"`` does not have that blind spot, so read a small
  ``permutation_p_pairs`` as task specificity even where ``permutation_p`` is large.

Both kinds of p can be small at once (more shared than chance, fewer than the same
task). With four tasks there are six pairs: a p-value below 0.05 / 6 ≈ 0.008 is
significant for all pairs together (Bonferroni); the permutation p-values cannot go
below 1 / (1 + ``--n-permutations``). A task whose answers are not single tokens of the
model's tokenizer, or with fewer than ``--min-samples`` kept samples, is reported and
left out of the comparisons (so are pairs with fewer common samples).

Figures: ``task_heatmaps.png`` (the mean attribution of every task, top-k heads
marked), ``task_overlap.png`` (top-k overlap of every pair, p-values annotated).
Run ``python examples/cross_task_digits.py``; numbers go to ``results.json``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from _common import (
    DEFAULT_STYLE,
    DigitSamples,
    Stopwatch,
    choose_positions,
    digit_samples,
    load_model,
    make_parser,
    reference_images,
    save_figure,
    stats,
    write_json,
)
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attribution import plot_heatmap, rank_by
from tl_lvlm import (
    HeadAttributionResult,
    HookedLVLM,
    answer_token_id,
    head_attribution,
    image_kv_baseline,
)
from tl_lvlm.ablation import ImageKVBaseline
from tl_lvlm.study.findings import task_specific
from tl_lvlm.study.layers import layer_distribution
from tl_lvlm.zoo.digits import split_indices
from tl_lvlm.zoo.questions import TASKS, Task

NAME = "cross_task_digits"
P_ABLATE = 0.75


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--n-per-digit", type=int, default=5, help="held-out scans per digit")
    parser.add_argument(
        "--n-masks",
        type=int,
        default=2000,
        help="random masks per sample and task; at 2,000 the coefficients have cosine >= "
        "0.99 to those at 8,000 (head_attribution_digits' n_masks_stability.png)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="heads in each top set")
    parser.add_argument(
        "--n-permutations", type=int, default=10_000, help="swap patterns of the permutation test"
    )
    parser.add_argument(
        "--min-samples",
        type=int,
        default=5,
        help="tasks with fewer kept samples, and pairs with fewer common ones, are reported "
        "but not compared",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks compared"
    )
    args = parser.parse_args(argv)
    if args.min_samples < 2:
        parser.error("--min-samples must be at least 2 (the permutation test swaps pairs)")
    return args


def untokenizable(model: HookedLVLM, task: Task) -> str | None:
    """Why ``task``'s answers cannot be attributed, or None if each is one token.

    Checked before running, since head attribution refuses a whole run with one label that
    is not a single token (the v1 checkpoint only has the digit words).
    """
    for word in task.answers:
        try:
            answer_token_id(model, word)
        except ValueError as e:
            return str(e)
    return None


def task_summary(
    model: HookedLVLM, result: HeadAttributionResult, n_run: int, k: int, min_samples: int
) -> dict[str, Any]:
    """What one task's attribution says, JSON-ready; ``compared`` says if it is compared."""
    n_kept = len(result.fits)
    out: dict[str, Any] = {
        "n_run": n_run,
        "n_kept": n_kept,
        "excluded_reasons": dict(Counter(e.reason for e in result.excluded)),
        "excluded": [e.describe(model.tokenizer) for e in result.excluded],
        "compared": n_kept >= min_samples,
    }
    if not out["compared"]:
        out["skipped"] = f"only {n_kept} kept samples (--min-samples {min_samples})"
    if n_kept == 0:
        return out
    out.update(
        r2=stats(result.r2),
        pearson=stats(result.pearson),
        top_heads=[
            {"layer": layer, "head": head, "coef": coef}
            for layer, head, coef in result.top_heads(k)
        ],
        layers=layer_distribution(result.mean, k=k),
        mean_attribution=result.mean,
    )
    return out


def compare_tasks(
    a: HeadAttributionResult,
    b: HeadAttributionResult,
    k: int,
    n_permutations: int,
    seed: int,
    min_samples: int,
) -> dict[str, Any]:
    """Top-k overlap and its p-values for two tasks, on the samples kept in both."""
    common = np.intersect1d(a.sample_ids, b.sample_ids)
    out: dict[str, Any] = {"n_common": len(common), "sample_ids": common}
    if len(common) < min_samples:
        out["skipped"] = f"only {len(common)} common kept samples (--min-samples {min_samples})"
        return out
    # sample_ids are ascending (samples run in order), so searchsorted finds their rows.
    coef_a = a.coef[np.searchsorted(a.sample_ids, common)]
    coef_b = b.coef[np.searchsorted(b.sample_ids, common)]
    # The statistics tl-lvlm study reports for every pair of questions.
    finding = task_specific(coef_a, coef_b, k=k, n_permutations=n_permutations, seed=seed)
    out.update({key: v for key, v in finding.statistic.items() if key not in ("tasks", "k")})
    return out


# ----------------------------------------------------------------------- figures
def plot_task_heatmaps(
    results: dict[str, HeadAttributionResult | None], reasons: dict[str, str], k: int
) -> Figure:
    """Mean attribution of every task side by side, its top-k heads ringed."""
    fig = Figure(figsize=(4.2 * len(results), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(results)))
    for ax, (name, result) in zip(axes, results.items(), strict=True):
        if result is None or not result.fits:
            ax.set_axis_off()
            ax.set_title(name)
            ax.text(0.5, 0.5, reasons[name], ha="center", va="center", wrap=True, fontsize=8)
            continue
        mean = result.mean
        title = f"{name} (n={len(result.fits)})"
        if reasons[name]:
            title += "\nnot compared: too few samples"
        plot_heatmap(mean, ax=ax, title=title)
        top = rank_by(mean)[:k]
        ax.scatter(
            top % result.n_heads, top // result.n_heads, s=60, facecolors="none", edgecolors="k"
        )
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Mean head attribution per task; circles: top-{k} heads")
    return fig


def plot_overlap_matrix(
    summaries: dict[str, dict[str, Any]], pairs: list[dict[str, Any]], k: int
) -> Figure:
    """Top-k overlap of every pair of tasks, with its chance and permutation p-values.

    The diagonal gives each task's kept samples; tasks and pairs left out are blank.
    """
    names = list(summaries)
    n = len(names)
    values = np.full((n, n), np.nan)
    labels: dict[tuple[int, int], str] = {}
    for i, name in enumerate(names):
        summary = summaries[name]
        if summary["compared"]:
            values[i, i] = k
        labels[i, i] = f"{summary['n_kept']} kept" + (
            "" if summary["compared"] else "\nnot compared"
        )
    for i in range(n):
        for j in range(n):
            labels.setdefault((i, j), "n/a")
    for pair in pairs:
        i, j = (names.index(t) for t in pair["tasks"])
        if "overlap" in pair:
            values[i, j] = values[j, i] = pair["overlap"]
            text = (
                f"{pair['overlap']}/{k} (n={pair['n_common']})\n"
                f"chance p={pair['chance_p']:.2g}\n"
                f"perm p={pair['permutation_p']:.2g}\n"
                f"pairs p={pair['permutation_p_pairs']:.2g}"
            )
        else:
            text = f"n/a\n{pair['n_common']} common"
        labels[i, j] = labels[j, i] = text
    fig = Figure(figsize=(1.7 * n + 1.5, 1.4 * n + 1), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=k)
    fig.colorbar(image, ax=ax, label=f"shared top-{k} heads")
    for (i, j), text in labels.items():
        colour = "k" if np.isnan(values[i, j]) or values[i, j] > k / 2 else "w"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_title(
        f"Top-{k} heads shared by the mean maps\nchance p small: more shared than random; "
        "perm / pairs p small: task-specific",
        fontsize=9,
    )
    return fig


def run_task(
    model: HookedLVLM, task: Task, digits: DigitSamples, baseline: ImageKVBaseline, args
) -> HeadAttributionResult:
    return head_attribution(
        model,
        digits.asking(task.name).attribution_samples(),
        n_masks=args.n_masks,
        p_ablate=P_ABLATE,
        baseline=baseline,
        seed=args.seed,
        # The curves against the baselines are head_attribution_digits' subject; here
        # only the maps are compared.
        evaluate=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Stopwatch()
    model, checkpoint = load_model(args)
    n_heads_total = model.n_layers * model.n_heads
    if not 1 <= args.top_k < n_heads_total:
        # Checked before hours of attribution, not by the permutation test after them.
        raise ValueError(
            f"--top-k must be in [1, {n_heads_total}) for a model with {n_heads_total} heads, "
            f"got {args.top_k}"
        )
    positions = choose_positions(args.n_per_digit, args.seed)
    digits = digit_samples(positions, DEFAULT_STYLE, seed=args.seed)
    tasks = [TASKS[name] for name in args.tasks]
    reference = model.prepare(
        reference_images([DEFAULT_STYLE], args.n_reference, args.seed), tasks[0].question
    )
    baseline = image_kv_baseline(model, reference, kind="mean")

    results: dict[str, HeadAttributionResult | None] = {}
    summaries: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}
    runtime: dict[str, float] = {}
    for task in tasks:
        start = clock.seconds
        summary: dict[str, Any] = {"question": task.question, "n_run": len(digits)}
        problem = untokenizable(model, task)
        if problem is not None:
            results[task.name] = None
            summary.update(n_kept=0, compared=False, skipped=problem)
            reasons[task.name] = "answers are not single tokens\nof this tokenizer"
        else:
            result = run_task(model, task, digits, baseline, args)
            results[task.name] = result
            summary.update(task_summary(model, result, len(digits), args.top_k, args.min_samples))
            reasons[task.name] = summary.get("skipped", "")
        summaries[task.name] = summary
        runtime[task.name] = round(clock.seconds - start, 1)
        print(
            f"{task.name}: {summary['n_kept']}/{len(digits)} kept"
            + (f"; not compared: {summary['skipped'][:120]}" if not summary["compared"] else "")
        )

    compared = [t.name for t in tasks if summaries[t.name]["compared"]]
    pairs = []
    for i, name_a in enumerate(compared):
        for name_b in compared[i + 1 :]:
            pair = {"tasks": [name_a, name_b]}
            pair.update(
                compare_tasks(
                    results[name_a],
                    results[name_b],
                    args.top_k,
                    args.n_permutations,
                    args.seed,
                    args.min_samples,
                )
            )
            pairs.append(pair)
            if "overlap" in pair:
                print(
                    f"{name_a} vs {name_b} (n={pair['n_common']}): top-{args.top_k} overlap "
                    f"{pair['overlap']}, chance p {pair['chance_p']:.3g}, permutation p "
                    f"{pair['permutation_p']:.3g} (pairs {pair['permutation_p_pairs']:.3g}), "
                    f"pearson {pair['pearson']:.3f}"
                )
            else:
                print(f"{name_a} vs {name_b}: not compared, {pair['skipped']}")

    figures = {
        "task_heatmaps.png": plot_task_heatmaps(results, reasons, args.top_k),
        "task_overlap.png": plot_overlap_matrix(summaries, pairs, args.top_k),
    }
    for filename, fig in figures.items():
        save_figure(fig, args.out / filename)
    write_json(
        args.out / "results.json",
        {
            "script": NAME,
            "checkpoint": checkpoint,
            "config": {
                "split": "test",
                "style": DEFAULT_STYLE,
                "n_per_digit": args.n_per_digit,
                "positions": positions,
                "dataset_indices": split_indices("test")[positions],
                "n_masks": args.n_masks,
                "p_ablate": P_ABLATE,
                "baseline": f"mean image K/V of {args.n_reference} {DEFAULT_STYLE} training images",
                "top_k": args.top_k,
                "n_permutations": args.n_permutations,
                "min_samples": args.min_samples,
                "seed": args.seed,
            },
            "runtime_s": {"per_task": runtime, "total": clock.seconds},
            "tasks": summaries,
            "pairs": pairs,
            "figures": sorted(figures),
        },
    )
    print(
        f"wrote {args.out}: {len(compared)} of {len(tasks)} tasks compared, {clock.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
