"""Semantics or appearance: do the same digits in other styles use the same heads?

The paper finds that head selection follows the object's class, not its rendering: the
attributions of one class drawn as a photo, a sketch or clipart are more alike than those
of different classes in one style. Here the same held-out digit scans are rendered in
the styles of :data:`DEFAULT_STYLES`: black on white (``original``), random size, position
and colours (``coloured``, the training distribution) and the three appearance styles kept
out of training entirely (``thick``, ``outline``, ``noisy``). Each rendering gets its own
head attribution (one mean baseline shared by all styles), and pairs of per-sample
coefficient vectors are compared:

- *same digit, different style* (and its subset *same scan, different style*) against
- *different digit, same style* (and *different digit, different style* as a floor),

by cosine similarity (and, as a second measure, the Jaccard index of the top-10 heads).
The test statistic is the difference of the mean cosine of the first two kinds; its
p-value comes from a permutation test that shuffles the (digit, style) labels over the
samples, and a one-sided Mann-Whitney U test is reported beside it (its pairs share
samples, so it overstates the evidence). The pair kinds and the permutation test are
:mod:`tl_lvlm.study.similarity`'s (the digit is the class, the scan the item), as
``tl-lvlm study`` computes them; ``results.json`` names the kinds that way. Only
samples the model answers correctly are attributed; the accuracy of every style is reported.

Figures: ``similarity_boxplot.png`` (the pair kinds), ``similarity_matrix.png`` (cosine
between the mean vectors of every (style, digit)), ``mean_attribution_per_style.png``.
Run ``python examples/semantic_vs_appearance.py``; numbers go to ``results.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import (
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
from scipy.stats import mannwhitneyu

from attribution import plot_heatmap
from tl_lvlm import head_attribution, image_kv_baseline
from tl_lvlm.study.similarity import (
    APPEARANCE,
    SEMANTIC,
    cosine_matrix,
    jaccard_matrix,
    pair_kinds,
    semantic_permutation_test,
)
from tl_lvlm.zoo import DIGITS_QUESTION, evaluate_accuracy
from tl_lvlm.zoo.digits import STYLES, load_digit_images

NAME = "semantic_vs_appearance"
P_ABLATE = 0.75
#: Heads compared by the Jaccard index.
TOP_K = 10
#: Two trained renderings and the three never trained on.
DEFAULT_STYLES = ("original", "coloured", "thick", "outline", "noisy")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--styles", nargs="+", default=list(DEFAULT_STYLES), choices=STYLES, help="styles compared"
    )
    parser.add_argument("--n-per-digit", type=int, default=5, help="held-out scans per digit")
    parser.add_argument(
        "--n-masks",
        type=int,
        default=2000,
        help="random masks per sample; at 2,000 the coefficients have cosine >= 0.99 to "
        "those at 8,000 (head_attribution_digits' n_masks_stability.png)",
    )
    parser.add_argument(
        "--n-permutations", type=int, default=2000, help="permutations of the label shuffle test"
    )
    return parser.parse_args(argv)


@dataclass
class Attributions:
    """Coefficient vectors of the kept samples of every style, with their labels.

    Attributes:
        coef: ``[n, n_layers * n_heads]`` one row per kept (style, scan).
        digit: ``[n]`` class of each row.
        style: ``[n]`` index into the run's styles.
        scan: ``[n]`` position of the scan in the test split (shared across styles).
    """

    coef: np.ndarray
    digit: np.ndarray
    style: np.ndarray
    scan: np.ndarray


def compare(sim: np.ndarray, att: Attributions, n_permutations: int, seed: int) -> dict[str, Any]:
    """Statistics of every pair kind and the tests of semantic against appearance pairs."""
    kinds = pair_kinds(att.digit, att.style, att.scan)
    out: dict[str, Any] = {kind: stats(sim[mask]) for kind, mask in kinds.items()}
    out["mann_whitney_p"] = float(
        mannwhitneyu(sim[kinds[SEMANTIC]], sim[kinds[APPEARANCE]], alternative="greater").pvalue
    )
    out["permutation"] = semantic_permutation_test(
        sim, att.digit, att.style, n_permutations, seed, progress=True
    )
    return out


def class_means(att: Attributions, n_styles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean coefficient vector of every (style, digit) that kept a sample, style-major.

    Returns ``(means, digit, style)`` with one entry per (style, digit).
    """
    means, digits, styles = [], [], []
    for s in range(n_styles):
        for d in range(10):
            rows = (att.style == s) & (att.digit == d)
            if rows.any():
                means.append(att.coef[rows].mean(0))
                digits.append(d)
                styles.append(s)
    return np.stack(means), np.array(digits), np.array(styles)


# ----------------------------------------------------------------------- figures
def plot_boxes(values: dict[str, dict[str, np.ndarray]]) -> Figure:
    """Box plots of each measure (panel) over each pair kind (box)."""
    fig = Figure(figsize=(5 * len(values), 4), layout="constrained")
    for ax, (measure, by_kind) in zip(fig.subplots(1, len(values)), values.items(), strict=True):
        ax.boxplot(list(by_kind.values()), showfliers=False)
        ax.set_xticks(
            range(1, len(by_kind) + 1), [k.replace(", ", ",\n") for k in by_kind], fontsize=8
        )
        ax.set(ylabel=measure, title=f"{measure} of attribution vectors")
    return fig


def plot_class_matrix(
    sim: np.ndarray, digits: np.ndarray, styles: np.ndarray, names: Sequence[str]
) -> Figure:
    """Cosine between (style, digit) mean vectors, style blocks outlined."""
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(sim, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    edges = np.flatnonzero(np.diff(styles)) + 0.5
    for edge in edges:
        ax.axhline(edge, color="w", linewidth=1)
        ax.axvline(edge, color="w", linewidth=1)
    centers = [np.flatnonzero(styles == s).mean() for s in np.unique(styles)]
    labels = [names[s] for s in np.unique(styles)]
    ax.set_xticks(centers, labels, rotation=30)
    ax.set_yticks(centers, labels)
    ax.set_title("Cosine between mean attributions per (style, digit)\ndigits 0-9 within a block")
    return fig


def plot_style_heatmaps(means: dict[str, np.ndarray]) -> Figure:
    """Mean attribution (layer x head) of each style, on one color scale per panel."""
    fig = Figure(figsize=(3.2 * len(means), 3.2), layout="constrained")
    for ax, (style, mean) in zip(fig.subplots(1, len(means)), means.items(), strict=True):
        plot_heatmap(mean, ax=ax, title=style)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Stopwatch()
    model, checkpoint = load_model(args)
    positions = choose_positions(args.n_per_digit, args.seed)
    reference = model.prepare(
        reference_images(args.styles, args.n_reference, args.seed), DIGITS_QUESTION
    )
    baseline = image_kv_baseline(model, reference, kind="mean")

    per_style: dict[str, Any] = {}
    rows: list[tuple[np.ndarray, int, int, int]] = []
    style_means = {}
    for s, style in enumerate(args.styles):
        test_images, test_labels = load_digit_images("test", style, args.seed)
        samples = digit_samples(positions, style, args.seed)
        result = head_attribution(
            model,
            samples.attribution_samples(),
            n_masks=args.n_masks,
            p_ablate=P_ABLATE,
            baseline=baseline,
            seed=args.seed,
            evaluate=False,
        )
        kept = result.sample_ids
        rows += [
            (c.ravel(), int(samples.labels[i]), s, int(positions[i]))
            for i, c in zip(kept, result.coef, strict=True)
        ]
        per_style[style] = {
            "accuracy_test_split": evaluate_accuracy(
                model.hf_model, model.processor, test_images, test_labels
            ),
            "n_run": len(samples),
            "n_kept": len(kept),
            "excluded": {
                reason: sum(e.reason == reason for e in result.excluded)
                for reason in ("wrong_answer", "small_gap")
            },
            "r2": stats(result.r2) if len(kept) else None,
            "pearson": stats(result.pearson) if len(kept) else None,
        }
        if len(kept):
            style_means[style] = result.mean
    attribution_s = clock.seconds

    coef, digit, style_idx, scan = (np.array(v) for v in zip(*rows, strict=True))
    att = Attributions(coef, digit, style_idx, scan)
    cos, jac = cosine_matrix(att.coef), jaccard_matrix(att.coef, TOP_K)
    # Centred: without the component every sample shares, which dominates raw cosines.
    centred = cosine_matrix(att.coef - att.coef.mean(0))
    means, mean_digit, mean_style = class_means(att, len(args.styles))
    mean_cos = cosine_matrix(means)
    mean_kinds = pair_kinds(mean_digit, mean_style, np.arange(len(mean_digit)))

    kinds = pair_kinds(att.digit, att.style, att.scan)
    figures = {
        "similarity_boxplot.png": plot_boxes(
            {
                "cosine": {k: cos[m] for k, m in kinds.items()},
                f"Jaccard of top-{TOP_K} heads": {k: jac[m] for k, m in kinds.items()},
            }
        ),
        "similarity_matrix.png": plot_class_matrix(mean_cos, mean_digit, mean_style, args.styles),
        "mean_attribution_per_style.png": plot_style_heatmaps(style_means),
    }
    for filename, fig in figures.items():
        save_figure(fig, args.out / filename)

    results = {
        "script": NAME,
        "checkpoint": checkpoint,
        "config": {
            "split": "test",
            "styles": args.styles,
            "n_per_digit": args.n_per_digit,
            "n_masks": args.n_masks,
            "p_ablate": P_ABLATE,
            "baseline": f"mean image K/V of {args.n_reference} training images per style",
            "seed": args.seed,
            "top_k_jaccard": TOP_K,
        },
        "runtime_s": {"head_attribution": attribution_s, "total": clock.seconds},
        "per_style": per_style,
        "n_kept": len(att.digit),
        "cosine": compare(cos, att, args.n_permutations, args.seed),
        "jaccard_top_k": compare(jac, att, args.n_permutations, args.seed),
        "cosine_centred": compare(centred, att, args.n_permutations, args.seed),
        "class_mean_cosine": {
            kind: stats(mean_cos[m]) for kind, m in mean_kinds.items() if m.any()
        },
        "figures": sorted(figures),
    }
    write_json(args.out / "results.json", results)
    c = results["cosine"]
    print(
        f"wrote {args.out}: {len(att.digit)} samples kept; cosine same digit/other style "
        f"{c[SEMANTIC]['mean']:.3f} vs other digit/same style {c[APPEARANCE]['mean']:.3f} "
        f"(permutation p {c['permutation']['p_value']:.3g}), {clock.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
