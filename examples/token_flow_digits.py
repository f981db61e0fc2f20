"""Token-level flow on held-out digits: attention knockout sweeps and image-token attribution.

Two analyses of the paper on the bundled model, for ``--n-per-digit`` held-out test digits
of every class (``--style``, default ``coloured``: random size, position and colours):

1. **Attention knockout** (:func:`tl_lvlm.flow_sweep` with
   :data:`tl_lvlm.PAPER_EDGE_SETS`), for each of the four questions (``--tasks``): the
   question now carries information (which of four things to answer), so the paper's
   text-flow finding can be tested: does the question reach the role and final tokens
   *before* the image does? ``flow_timing_window{w}.png`` draws, per task, the question ->
   role/final knockout beside the image -> role/final knockout, and ``results.json`` has
   their timing per window (:func:`flow_timing`): the effect-weighted mean layer of each
   curve. The per-edge-set figures are drawn for the main-object question. A window of
   layers slides over the decoder and blocks attention along the edges of each edge set.
   Two window sizes by default (``--windows``): an eighth of the depth, the library's
   default and the paper's proportion (4 of LLaVA-1.5's 32 layers; 1 layer here), and half
   of the depth, since in a model this shallow one layer is easily routed around. Each
   experiment and window is one figure (``flow_{experiment}_window{w}.png``) of the paper's
   measure, the relative target logit ``logit(knocked) / logit(clean)``. That ratio keeps
   the part of the logit the model produces without any image, so the ``image_flow``
   figures have a second panel that rescales it to the image's share: ``(knocked - no
   image) / (clean - no image)``, where "no image" blocks every text token from the image
   in every layer (1 = the knockout keeps all the image's effect on the answer, 0 = none of
   it). The knockout in all layers at once is in ``results.json`` too.
2. **Image-token attribution** (:func:`tl_lvlm.image_token_attribution`), for the
   main-object and the background question (``--attribution-tasks``): the head
   attribution regression with the 6x6 image patches as components (``--n-masks`` masks,
   each patch's image K/V replaced by the mean baseline in every head). Overlays on a few
   samples (``image_attribution_overlays_{task}.png``), the mean map, and how the attribution
   divides between the digit's patches and the background (:func:`tl_lvlm.object_mass`).

**Object mask.** The images are drawn from scikit-learn's 8x8 digit scans
(:mod:`tl_lvlm.zoo.digits`): the ink map is resized to the appearance's ``size`` and
pasted at its ``(top, left)`` on a 24x24 canvas. The object mask repeats the same geometry
on the scan itself: the 8x8 pixels with ink above ``--ink-threshold`` (0.5 = half of full
ink, 8 of the 16 levels), resized with nearest neighbour and placed at the same offset. An
image patch (4x4 pixels) is an object patch when at least half of it is inside the mask.

Run ``python examples/token_flow_digits.py``; numbers go to ``results.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
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

from tl_lvlm import (
    PAPER_EDGE_SETS,
    FlowSweep,
    HookedLVLM,
    flow_sweep,
    image_kv_baseline,
    image_token_attribution,
)
from tl_lvlm.ablation import ImageKVBaseline
from tl_lvlm.analysis.image_tokens import NoImageEffectError, patch_mask, plot_image_attribution
from tl_lvlm.flow import plot_flow_sweep
from tl_lvlm.study.flow_timing import (
    EFFECT_THRESHOLD,
    IMAGE_ROUTE,
    NO_IMAGE,
    TEXT_ROUTE,
    image_share,
)
from tl_lvlm.study.flow_timing import timing_summary as study_timing
from tl_lvlm.zoo.digits import CANVAS_SIZE, STYLES, Appearance, digit_arrays
from tl_lvlm.zoo.questions import TASKS

NAME = "token_flow_digits"
P_ABLATE = 0.75


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--n-per-digit", type=int, default=5, help="held-out samples per digit")
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=STYLES, help="rendering")
    parser.add_argument(
        "--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="knockout questions"
    )
    parser.add_argument(
        "--attribution-tasks",
        nargs="+",
        default=["object", "background"],
        choices=list(TASKS),
        help="questions of the image-token attribution",
    )
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=None,
        help="knockout window sizes in layers (default: an eighth and half of the depth)",
    )
    parser.add_argument(
        "--n-masks", type=int, default=2000, help="masks per sample of image-token attribution"
    )
    parser.add_argument(
        "--n-overlays", type=int, default=10, help="samples drawn as overlays (one per digit)"
    )
    parser.add_argument(
        "--ink-threshold", type=float, default=0.5, help="8x8 ink above this is the object"
    )
    return parser.parse_args(argv)


def object_mask(ink8: np.ndarray, appearance: Appearance, threshold: float) -> np.ndarray:
    """``[24, 24]`` bool mask of the digit's strokes on the canvas (see the module doc)."""
    size = appearance.size
    # Nearest neighbour: output pixel i samples scan pixel floor(i * 8 / size).
    src = np.arange(size) * ink8.shape[0] // size
    strokes = (ink8 > threshold)[np.ix_(src, src)]
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
    top, left = appearance.top, appearance.left
    canvas[top : top + size, left : left + size] = strokes
    return canvas


# -------------------------------------------------------------------- knockout
def sweep_summary(sweep: FlowSweep) -> dict[str, Any]:
    """Curves (mean and std over kept samples) and their minimum, per edge set."""
    return {
        "window": sweep.window,
        "starts": sweep.starts,
        "n_kept": len(sweep.kept),
        "excluded": sweep.excluded,
        "edges": sweep.edges,
        "curves": sweep.curves(),
        "curves_std": {name: sweep.normalized(name).std(1) for name in sweep.knocked},
        "min_over_windows": {
            name: {"value": float(c.min()), "first_layer": sweep.starts[int(c.argmin())]}
            for name, c in sweep.curves().items()
        },
    }


def plot_image_flow(sweep: FlowSweep, shares: dict[str, np.ndarray]) -> Figure:
    """The paper's relative logit (left) and the image's share of the effect (right)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_ratio, ax_share = fig.subplots(1, 2)
    plot_flow_sweep(sweep, ax=ax_ratio, title=f"Image flow, relative logit (n={len(sweep.kept)})")
    x = np.asarray(sweep.starts)
    for name, share in shares.items():
        mean, std = share.mean(1), share.std(1)
        (line,) = ax_share.plot(x, mean, marker=".", label=name)
        ax_share.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax_share.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_share.axhline(0.0, color="gray", linestyle=":", linewidth=1)
    ax_share.set(
        title="Image flow, share of the image's effect kept",
        xlabel=f"first layer of the knockout window ({sweep.window} layers)",
        ylabel="(knocked - no image) / (clean - no image)",
    )
    ax_share.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_ratio, ax_share):
        ax.legend(fontsize=7)
    return fig


def knockout_sweeps(
    model: HookedLVLM, samples: DigitSamples, windows: Sequence[int]
) -> tuple[dict[str, Any], dict[str, Figure]]:
    """Every experiment of :data:`PAPER_EDGE_SETS` in all layers and swept with each window.

    Returns the summary (``all_layers``: experiment -> edge set -> relative logit;
    ``windows``: window -> experiment -> :func:`sweep_summary`) and the figures.
    """
    inputs = model.prepare(samples.images, samples.question)
    targets = samples.target_ids(model)
    summary: dict[str, Any] = {"all_layers": {}, "windows": {w: {} for w in windows}}
    figures = {}
    for experiment, edges in PAPER_EDGE_SETS.items():
        all_layers = flow_sweep(model, inputs, edges, model.n_layers, targets=targets)
        summary["all_layers"][experiment] = {k: c[0] for k, c in all_layers.curves().items()}
        for window in windows:
            sweep = flow_sweep(model, inputs, edges, window, targets=targets)
            entry = summary["windows"][window][experiment] = sweep_summary(sweep)
            figure = f"flow_{experiment}_window{window}.png"
            if NO_IMAGE in edges:
                shares = image_share(sweep, all_layers.knocked[NO_IMAGE][0])
                entry["image_share"] = {
                    "n_samples": next(iter(shares.values())).shape[1],
                    "curves": {name: share.mean(1) for name, share in shares.items()},
                }
                figures[figure] = plot_image_flow(sweep, shares)
            else:
                figures[figure] = plot_flow_sweep(
                    sweep, title=f"{experiment}, relative logit (n={len(sweep.kept)})"
                )
    return summary, figures


# ------------------------------------------------------- image-token attribution
def image_attributions(
    model: HookedLVLM,
    samples: DigitSamples,
    baseline: ImageKVBaseline,
    masks: np.ndarray,
    n_masks: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """Image-token attribution and object mass of every correctly answered sample.

    Returns per-sample records (kept or with the reason they were left out) and the
    ``[grid, grid]`` maps of the kept samples by sample index.
    """
    inputs = model.prepare(samples.images, samples.question)
    targets = samples.target_ids(model)
    with torch.no_grad():
        answers = model(inputs)[:, -1].argmax(-1).tolist()
    records, maps = [], {}
    for i in tqdm(range(len(samples)), desc="image-token attribution", unit="sample"):
        record: dict[str, Any] = {
            "position": int(samples.positions[i]),
            "digit": int(samples.labels[i]),
        }
        records.append(record)
        if answers[i] != targets[i]:
            record["excluded"] = f"wrong answer {model.tokenizer.decode([answers[i]])!r}"
            continue
        try:
            result = image_token_attribution(
                model,
                inputs[i],
                baseline=baseline,
                target=targets[i],
                n_masks=n_masks,
                p_ablate=P_ABLATE,
                seed=seed,
                progress=False,
            )
        except NoImageEffectError as e:
            record["excluded"] = str(e)
            continue
        try:
            mass = result.object_mass(masks[i])
        except ValueError as e:  # a small thin digit can cover no whole half-patch
            record["excluded"] = str(e)
            continue
        maps[i] = result.coef
        record.update(
            r2=result.fit.r2,
            pearson=result.fit.pearson,
            object_share=mass.object_share,
            object_area=mass.object_area,
            mean_object=mass.mean_object,
            mean_background=mass.mean_background,
        )
    return records, maps


def object_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Object vs background statistics over the kept samples."""
    kept = [r for r in records if "excluded" not in r]

    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in kept])

    share, area = column("object_share"), column("object_area")
    mean_obj, mean_bg = column("mean_object"), column("mean_background")
    return {
        "n_kept": len(kept),
        "excluded": {r["position"]: r["excluded"] for r in records if "excluded" in r},
        "r2": stats(column("r2")),
        "pearson": stats(column("pearson")),
        "object_share_of_positive_mass": stats(share),
        "object_area": stats(area),
        "background_share_of_positive_mass": stats(1 - share),
        "share_over_area": stats(share / area),
        "mean_coef_object": stats(mean_obj),
        "mean_coef_background": stats(mean_bg),
        "samples_with_object_share_above_area": float((share > area).mean()),
    }


def plot_overlays(
    samples: DigitSamples, maps: dict[int, np.ndarray], masks: np.ndarray, chosen: list[int]
) -> Figure:
    """Attribution maps over their images, the object patches outlined."""
    cols = min(5, len(chosen))
    n_rows = -(-len(chosen) // cols)
    fig = Figure(figsize=(3.3 * cols, 3.0 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, cols)).ravel()
    for ax, i in zip(axes, chosen, strict=False):
        plot_image_attribution(
            maps[i],
            samples.images[i],
            object_mask=masks[i],
            ax=ax,
            title=f"digit {samples.labels[i]} (test #{samples.positions[i]})",
        )
    for ax in axes[len(chosen) :]:
        ax.set_axis_off()
    return fig


def plot_mean_map(maps: dict[int, np.ndarray], masks: np.ndarray) -> Figure:
    """Mean attribution map over the kept samples, beside how often a patch is object."""
    grid = next(iter(maps.values())).shape[0]
    mean = np.mean(list(maps.values()), axis=0)
    object_rate = np.mean([patch_mask(masks[i], grid) for i in maps], axis=0)
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax_map, ax_obj = fig.subplots(1, 2)
    vmax = float(np.abs(mean).max()) or 1.0
    im = ax_map.imshow(mean, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax_map, label="coefficient")
    ax_map.set(title=f"Mean attribution (n={len(maps)})", xticks=[], yticks=[])
    im = ax_obj.imshow(object_rate, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax_obj, label="fraction of samples")
    ax_obj.set(title="Patch is an object patch", xticks=[], yticks=[])
    return fig


def plot_flow_timing(sweeps: dict[str, dict[str, Any]], window: int) -> Figure:
    """Per task: the question's and the image's route to role/final, knocked out by window."""
    fig = Figure(figsize=(3.6 * len(sweeps), 3.4), layout="constrained")
    axes = fig.subplots(1, len(sweeps), squeeze=False)[0]
    for ax, (task, flow) in zip(axes, sweeps.items(), strict=True):
        entry = flow["windows"][window]
        for experiment, route, label in (
            ("text_flow", TEXT_ROUTE, "question -> role, final"),
            ("image_flow", IMAGE_ROUTE, "image -> role, final"),
        ):
            curve = np.asarray(entry[experiment]["curves"][route])
            ax.plot(entry[experiment]["starts"], curve, marker=".", label=label)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set(
            title=f"{task} (n={entry['text_flow']['n_kept']})",
            xlabel=f"first layer of the {window}-layer window",
            ylabel="logit(knocked) / logit(clean)",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


def timing_summary(flow: dict[str, Any], window: int) -> dict[str, Any]:
    """:func:`tl_lvlm.study.flow_timing.timing_summary` of one window's sweeps."""
    text, image = flow["windows"][window]["text_flow"], flow["windows"][window]["image_flow"]
    return study_timing(
        text["curves"][TEXT_ROUTE], image["curves"][IMAGE_ROUTE], text["starts"], window
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Stopwatch()
    model, checkpoint = load_model(args)
    positions = choose_positions(args.n_per_digit, args.seed)
    samples = digit_samples(positions, args.style, seed=args.seed)
    ink8 = digit_arrays("test")[0][positions]
    masks = np.stack(
        [
            object_mask(ink, a, args.ink_threshold)
            for ink, a in zip(ink8, samples.appearances, strict=True)
        ]
    )

    depth = model.n_layers
    windows = args.windows or sorted({max(1, depth // 8), max(1, depth // 2)})
    flow, timing, figures = {}, {}, {}
    for task in args.tasks:
        flow[task], task_figures = knockout_sweeps(model, samples.asking(task), windows)
        timing[task] = {w: timing_summary(flow[task], w) for w in windows}
        if task == "object":
            figures.update(task_figures)
    for window in windows:
        figures[f"flow_timing_window{window}.png"] = plot_flow_timing(flow, window)
    flow_s = clock.seconds
    reference = model.prepare(
        reference_images([args.style], args.n_reference, args.seed), samples.question
    )
    baseline = image_kv_baseline(model, reference, kind="mean")
    attribution: dict[str, Any] = {}
    attribution_samples: dict[str, Any] = {}
    for task in args.attribution_tasks:
        asked = samples.asking(task)
        records, maps = image_attributions(model, asked, baseline, masks, args.n_masks, args.seed)
        attribution[task] = object_summary(records)
        attribution_samples[task] = records
        if not maps:
            continue
        # One kept sample per digit, the first of each, for the overlays.
        first = {}
        for i in maps:
            first.setdefault(int(samples.labels[i]), i)
        chosen = [first[d] for d in sorted(first)][: args.n_overlays]
        figures[f"image_attribution_overlays_{task}.png"] = plot_overlays(
            asked, maps, masks, chosen
        )
        figures[f"image_attribution_mean_{task}.png"] = plot_mean_map(maps, masks)
    for filename, fig in figures.items():
        save_figure(fig, args.out / filename)

    results = {
        "script": NAME,
        "checkpoint": checkpoint,
        "config": {
            "split": "test",
            "style": args.style,
            "n_per_digit": args.n_per_digit,
            "windows": windows,
            "tasks": args.tasks,
            "questions": {t: TASKS[t].question for t in args.tasks},
            "flow_measure": "logit(knocked) / logit(clean) of the label's token",
            "timing": "per window: effect = max(0, 1 - curve), its weighted mean layer; "
            f"first/last layer where effect >= {EFFECT_THRESHOLD}",
            "image_attribution": {
                "tasks": args.attribution_tasks,
                "n_masks": args.n_masks,
                "p_ablate": P_ABLATE,
                "baseline": f"mean image K/V of {args.n_reference} training images ({args.style})",
            },
            "object_mask": f"8x8 ink > {args.ink_threshold}, nearest resize to the digit's "
            "size at its offset; a patch is object when >= half of it is",
            "seed": args.seed,
        },
        "runtime_s": {
            "flow": flow_s,
            "image_attribution": round(clock.seconds - flow_s, 1),
            "total": clock.seconds,
        },
        "flow": flow,
        "timing": timing,
        "image_attribution": attribution,
        "image_attribution_samples": attribution_samples,
        "figures": sorted(figures),
    }
    write_json(args.out / "results.json", results)
    summary = ", ".join(
        f"{t}: object share {a['object_share_of_positive_mass']['mean']:.2f} "
        f"on {a['object_area']['mean']:.2f} of the area"
        for t, a in attribution.items()
        if a["n_kept"]
    )
    order = {t: {w: v["text_before_image"] for w, v in tw.items()} for t, tw in timing.items()}
    print(
        f"wrote {args.out}: {summary}; text before image (task: window: yes?) {order}; "
        f"{clock.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
