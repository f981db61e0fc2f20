"""Head attribution on held-out digits: fit quality, heads needed against baselines, layers.

The paper's main analysis on the bundled model: for ``--n-per-digit`` held-out test digits
of every class (``--style``, default ``coloured``: random size, position and colours),
``--n-masks`` random ablations of the heads' image keys/values (each head ablated with
probability 0.75, mean baseline over training images), an ElasticNet fit from masks to
the normalized answer logit, and

- the distribution of the per-sample held-out R² and Pearson rho (``fit_quality.png``);
- faithfulness / completeness curves and the heads needed for F > 0.8 and C < 0.2 of head
  attribution against the attention-weight, single-head-ablation and random rankings
  (``faithfulness_completeness.png``);
- where the important heads sit: top-10 heads and positive attribution mass per layer
  (``layer_distribution.png``), and the share of the top-10 heads' attribution in the
  second half of the layers (the paper: mid-to-late layers);
- the mean attribution heatmap (``heatmap.png``);
- R² and coefficient stability against the number of masks on a few samples
  (``n_masks_stability.png``), which justifies the default ``--n-masks``.

Run ``python examples/head_attribution_digits.py``; numbers go to ``results.json``.
"""

from __future__ import annotations

import argparse
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
from tqdm.auto import tqdm

from attribution import components_needed, plot_curves, plot_heatmap
from tl_lvlm import HeadAttributionResult, HookedLVLM, head_attribution, image_kv_baseline
from tl_lvlm.ablation import ImageKVBaseline
from tl_lvlm.analysis.evaluation import C_THRESHOLD, F_THRESHOLD
from tl_lvlm.study.layers import layer_distribution
from tl_lvlm.zoo.digits import STYLES

NAME = "head_attribution_digits"
#: Heads counted as "top" in the layer distribution.
TOP_K = 10
P_ABLATE = 0.75


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--n-per-digit", type=int, default=10, help="held-out samples per digit")
    parser.add_argument(
        "--style", default=DEFAULT_STYLE, choices=STYLES, help="rendering of samples and baseline"
    )
    parser.add_argument(
        "--n-masks",
        type=int,
        default=4000,
        help="random masks per sample (the paper: 10,000); see n_masks_stability.png",
    )
    parser.add_argument(
        "--stability-samples",
        type=int,
        default=5,
        help="samples of the n_masks stability check (0 skips it)",
    )
    parser.add_argument(
        "--stability-n-masks",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 4000, 8000],
        help="n_masks values of the stability check; the largest is the reference",
    )
    return parser.parse_args(argv)


def heads_needed_per_sample(result: HeadAttributionResult) -> dict[str, dict[str, Any]]:
    """Per ranking: heads needed on each sample's own curves (median, share that reach it).

    The library's ``heads_needed`` reads the averaged curves; per sample the thresholds
    may be met earlier, later or never. Samples that never meet them count as
    ``n_layers * n_heads + 1`` in the median.
    """
    ev = result.evaluation
    never = result.n_layers * result.n_heads + 1
    out = {}
    for name in ev.rankings:
        needed = [
            components_needed(ev.ks, f, c, F_THRESHOLD, C_THRESHOLD)
            for f, c in zip(ev.faithfulness[name], ev.completeness[name], strict=True)
        ]
        reached = [k for k in needed if k is not None]
        out[name] = {
            "median": float(np.median([never if k is None else k for k in needed])),
            "share_reached": len(reached) / len(needed),
        }
    return out


def mask_stability(
    model: HookedLVLM,
    samples: DigitSamples,
    baseline: ImageKVBaseline,
    n_masks_values: Sequence[int],
    seed: int,
) -> dict[str, Any]:
    """Held-out R² and agreement of the coefficients with the largest ``n_masks`` fit.

    Agreement is the cosine similarity of a sample's coefficient vector at each
    ``n_masks`` with its vector at the largest one.
    """
    n_masks_values = sorted(n_masks_values)
    runs = {
        n: head_attribution(
            model,
            samples.attribution_samples(),
            n_masks=n,
            p_ablate=P_ABLATE,
            baseline=baseline,
            seed=seed,
            evaluate=False,
            progress=False,
        )
        for n in tqdm(n_masks_values, desc="n_masks stability", unit="n_masks")
    }
    reference = runs[n_masks_values[-1]]
    ref = reference.coef.reshape(len(reference.fits), -1)
    out: dict[str, Any] = {
        "n_masks": n_masks_values,
        "n_samples": len(reference.fits),
        "r2": {},
        "pearson": {},
        "cosine_to_largest": {},
    }
    for n, run in runs.items():
        if not np.array_equal(run.sample_ids, reference.sample_ids):
            raise RuntimeError("the kept samples differ between n_masks values")
        coef = run.coef.reshape(len(run.fits), -1)
        cos = (coef * ref).sum(1) / np.linalg.norm(coef, axis=1) / np.linalg.norm(ref, axis=1)
        out["r2"][n] = run.r2.tolist()
        out["pearson"][n] = run.pearson.tolist()
        out["cosine_to_largest"][n] = cos.tolist()
    return out


# ----------------------------------------------------------------------- figures
def plot_fit_quality(result: HeadAttributionResult) -> Figure:
    """Histograms of the per-sample held-out R² and Pearson rho, medians marked."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    for ax, (label, values) in zip(
        fig.subplots(1, 2),
        (("held-out $R^2$", result.r2), ("held-out Pearson ρ", result.pearson)),
        strict=True,
    ):
        ax.hist(values, bins=20, color="tab:blue", alpha=0.8)
        median = float(np.median(values))
        ax.axvline(median, color="k", linestyle="--", linewidth=1, label=f"median {median:.3f}")
        ax.set(xlabel=label, ylabel="samples", title=f"{label} (n={len(values)})")
        ax.legend()
    return fig


def plot_evaluation(result: HeadAttributionResult) -> Figure:
    """Mean faithfulness and completeness curves of every ranking, side by side."""
    ev = result.evaluation
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_f, ax_c = fig.subplots(1, 2)
    n = len(result.fits)
    plot_curves(
        ev.ks,
        ev.mean_faithfulness(),
        kind="faithfulness",
        ax=ax_f,
        title=f"Faithfulness: top-k heads kept (n={n})",
    )
    plot_curves(
        ev.ks,
        ev.mean_completeness(),
        kind="completeness",
        ax=ax_c,
        title=f"Completeness: top-k heads ablated (n={n})",
    )
    ax_f.legend(fontsize=7)
    ax_c.legend(fontsize=7)
    return fig


def plot_layers(dist: dict[str, Any]) -> Figure:
    """Top-k heads per layer (mean attribution and per-sample average), and positive mass."""
    n_layers = len(dist["top_k_count_per_layer"])
    layers = np.arange(n_layers)
    fig = Figure(figsize=(9, 3.3), layout="constrained")
    ax_count, ax_mass = fig.subplots(1, 2)
    width = 0.4
    ax_count.bar(
        layers - width / 2,
        dist["top_k_count_per_layer"],
        width,
        label="top heads of the mean attribution",
    )
    ax_count.bar(
        layers + width / 2,
        dist["per_sample_top_k_count_per_layer_mean"],
        width,
        label="each sample's top heads (mean)",
    )
    ax_count.set(xlabel="layer", ylabel="heads", title=f"Top-{dist['k']} heads per layer")
    ax_count.legend(fontsize=7)
    ax_mass.bar(layers, dist["positive_mass_share_per_layer"], color="tab:green")
    ax_mass.set(
        xlabel="layer",
        ylabel="share",
        title="Positive mean attribution per layer",
    )
    for ax in (ax_count, ax_mass):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(n_layers / 2 - 0.5, color="gray", linestyle=":", linewidth=1)
    return fig


def plot_mean_heatmap(result: HeadAttributionResult) -> Figure:
    """Layer x head mean attribution with integer ticks."""
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot()
    plot_heatmap(result.mean, ax=ax, title=f"Mean head attribution (n={len(result.fits)})")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_stability(stability: dict[str, Any]) -> Figure:
    """R² and coefficient cosine to the largest ``n_masks`` fit, per sample, vs ``n_masks``."""
    fig = Figure(figsize=(9, 3.3), layout="constrained")
    ns = stability["n_masks"]
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("r2", "cosine_to_largest"),
        ("held-out $R^2$", f"cosine to coefficients at {ns[-1]} masks"),
        strict=True,
    ):
        values = np.array([stability[key][n] for n in ns])  # [n_values, n_samples]
        ax.plot(ns, values, color="gray", alpha=0.5, marker=".")
        ax.plot(ns, values.mean(1), color="k", marker="o", label="mean")
        ax.set(xscale="log", xlabel="masks per sample", ylabel=label, title=label)
        # Only the measured values as ticks: log-scale minor labels overlap.
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.legend()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Stopwatch()
    model, checkpoint = load_model(args)
    positions = choose_positions(args.n_per_digit, args.seed)
    samples = digit_samples(positions, args.style, seed=args.seed)
    reference = model.prepare(
        reference_images([args.style], args.n_reference, args.seed), samples.question
    )
    baseline = image_kv_baseline(model, reference, kind="mean")

    result = head_attribution(
        model,
        samples.attribution_samples(),
        n_masks=args.n_masks,
        p_ablate=P_ABLATE,
        baseline=baseline,
        seed=args.seed,
    )
    attribution_s = clock.seconds
    dist = layer_distribution(result.mean, result.coef, TOP_K)
    ev = result.evaluation
    figures = {
        "fit_quality.png": plot_fit_quality(result),
        "faithfulness_completeness.png": plot_evaluation(result),
        "layer_distribution.png": plot_layers(dist),
        "heatmap.png": plot_mean_heatmap(result),
    }
    stability = None
    if args.stability_samples:
        # The first sample of each of the first digits: different classes, few runs.
        few = choose_positions(1, args.seed)[: args.stability_samples]
        stability = mask_stability(
            model,
            digit_samples(few, args.style, seed=args.seed),
            baseline,
            args.stability_n_masks,
            args.seed,
        )
        figures["n_masks_stability.png"] = plot_stability(stability)
    for filename, fig in figures.items():
        save_figure(fig, args.out / filename)

    kept = result.sample_ids
    results = {
        "script": NAME,
        "checkpoint": checkpoint,
        "config": {
            "split": "test",
            "style": args.style,
            "n_per_digit": args.n_per_digit,
            "n_masks": args.n_masks,
            "p_ablate": P_ABLATE,
            "baseline": f"mean image K/V of {args.n_reference} training images",
            "seed": args.seed,
            "alpha": result.config["alpha"],
            "l1_ratio": result.config["l1_ratio"],
            "holdout": result.config["holdout"],
        },
        "runtime_s": {"head_attribution": attribution_s, "total": clock.seconds},
        "samples": {
            "n_run": len(samples),
            "n_kept": len(kept),
            "excluded": [e.describe(model.tokenizer) for e in result.excluded],
        },
        "fit": {
            "r2": stats(result.r2),
            "pearson": stats(result.pearson),
            "per_sample": [
                {
                    "position": int(samples.positions[i]),
                    "digit": int(samples.labels[i]),
                    "r2": f.r2,
                    "pearson": f.pearson,
                }
                for i, f in zip(kept, result.fits, strict=True)
            ],
        },
        "heads_needed": {
            "faithfulness_above": F_THRESHOLD,
            "completeness_below": C_THRESHOLD,
            "n_heads_total": result.n_layers * result.n_heads,
            "from_mean_curves": result.heads_needed(),
            "per_sample": heads_needed_per_sample(result),
        },
        "curves": {
            "ks": ev.ks,
            "faithfulness": ev.mean_faithfulness(),
            "completeness": ev.mean_completeness(),
        },
        "top_heads": [
            {"layer": layer, "head": head, "coef": coef}
            for layer, head, coef in result.top_heads(TOP_K)
        ],
        "layers": dist,
        "mean_attribution": result.mean,
        "n_masks_stability": stability,
        "figures": sorted(figures),
    }
    write_json(args.out / "results.json", results)
    print(
        f"wrote {args.out}: {len(kept)}/{len(samples)} samples kept, "
        f"R2 median {np.median(result.r2):.3f}, heads needed {result.heads_needed()}, "
        f"top-{TOP_K} mass in second half {dist['top_k_mass_share_second_half']:.2f}, "
        f"{clock.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
