"""Summaries and figures of a :class:`~tl_lvlm.analysis.heads.HeadAttributionResult`.

:func:`write_report` writes into a directory (every file atomically):

- ``summary.json``: configuration, kept / excluded samples (with reasons; per kept
  sample ``n_masks_used``), held-out R² and Pearson ρ (per sample, mean, std), top
  heads of the mean attribution, heads needed per ranking and the averaged curves
  (see :func:`summarize`);
- ``heatmap.png``: layer x head mean attribution;
- ``faithfulness.png`` / ``completeness.png``: averaged curves of head attribution
  and each baseline ranking;
- ``scatter.png``: held-out predicted vs actual normalized logit of every kept sample;
- ``report.html``: the interactive report of :mod:`tl_lvlm.report.html` (heatmap with each
  head's numbers on hover and its per-sample values on click, curves, fit quality), one
  self-contained file.

Every figure, PNG or interactive, carries the run's model, question, settings and heads
needed (:func:`tl_lvlm.report.from_results.head_context`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attribution import plot_curves, plot_heatmap, plot_scatter
from attribution.atomic import atomic_file
from attribution.plots import add_caption
from tl_lvlm._utils.files import json_safe, write_json
from tl_lvlm.analysis.evaluation import C_THRESHOLD, F_THRESHOLD
from tl_lvlm.analysis.heads import HeadAttributionConfig, HeadAttributionResult
from tl_lvlm.cli.common import CliError, one_line
from tl_lvlm.cli.run_dir import SAMPLES_NAME, read_record, report_files
from tl_lvlm.report.data import ReportData
from tl_lvlm.report.from_results import head_context, head_report
from tl_lvlm.report.html import write_html

SUMMARY_NAME = "summary.json"
HTML_NAME = "report.html"
#: The question of a result written without one and without a samples.json.
NO_QUESTION = "question not recorded"
FIGURES = ("heatmap.png", "faithfulness.png", "completeness.png", "scatter.png")


def summarize(
    result: HeadAttributionResult,
    *,
    tokenizer=None,
    names: Sequence[str] | None = None,
    n_top: int = 10,
) -> dict[str, Any]:
    """A JSON-serializable summary of ``result`` (NaN written as null).

    Args:
        tokenizer: decodes target / answer token ids when given.
        names: name of every input sample (indexed by sample id), e.g. image files.
        n_top: number of top heads listed.
    """

    def decode(token: int | np.integer) -> str | None:
        return None if tokenizer is None else tokenizer.decode([int(token)])

    def name(sample_id: int | np.integer) -> str | None:
        return None if names is None else names[sample_id]

    samples = [
        {
            "sample": int(i),
            "name": name(i),
            "target": int(t),
            "target_str": decode(t),
            "label": None if lab < 0 else int(lab),
            "r2": f.r2,
            "pearson": f.pearson,
            "clean_logit": c,
            "ablated_logit": a,
            "n_masks_used": n,
        }
        for i, t, lab, f, c, a, n in zip(
            result.sample_ids,
            result.targets,
            result.labels,
            result.fits,
            result.clean_logit,
            result.ablated_logit,
            result.n_masks_used,
            strict=True,
        )
    ]
    excluded = [
        {
            "sample": e.sample_id,
            "name": name(e.sample_id),
            "reason": e.reason,
            "answer": e.answer,
            "answer_str": decode(e.answer),
            "target": e.target,
            "target_str": decode(e.target),
            "label": e.label,
            "clean_logit": e.clean_logit,
            "ablated_logit": e.ablated_logit,
            "description": e.describe(tokenizer),
        }
        for e in result.excluded
    ]
    summary: dict[str, Any] = {
        "config": result.config,
        "n_kept": len(result.fits),
        "n_excluded": len(result.excluded),
        "samples": samples,
        "excluded": excluded,
    }
    if result.fits:
        agg = result.aggregate
        summary["r2"] = {"mean": agg.r2_mean, "std": agg.r2_std}
        summary["pearson"] = {"mean": agg.pearson_mean, "std": agg.pearson_std}
        summary["top_heads"] = [
            {"layer": layer, "head": head, "coef": coef}
            for layer, head, coef in result.top_heads(n_top)
        ]
    if result.evaluation is not None and result.fits:
        ev = result.evaluation
        summary["heads_needed"] = {
            "faithfulness_above": F_THRESHOLD,
            "completeness_below": C_THRESHOLD,
            **ev.heads_needed(),
        }
        summary["curves"] = {
            "ks": ev.ks.tolist(),
            "faithfulness": {k: v.tolist() for k, v in ev.mean_faithfulness().items()},
            "completeness": {k: v.tolist() for k, v in ev.mean_completeness().items()},
        }
    return json_safe(summary)


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of a :func:`summarize` summary, for terminals."""
    config = summary["config"]
    n = summary["n_kept"] + summary["n_excluded"]
    lines = [
        f"model: {config['model']}",
        f"heads: {config['n_layers']} layers x {config['n_heads']}   masks per sample: "
        f"{config['n_masks']} (p_ablate {config['p_ablate']}, baseline {config['baseline']})",
        f"samples: {n} run, {summary['n_kept']} kept, {summary['n_excluded']} excluded",
    ]
    lines += [f"  excluded {e['description']}" for e in summary["excluded"]]
    if "r2" in summary:
        r2, rho = summary["r2"], summary["pearson"]
        lines.append(
            f"held-out R2 {_num(r2['mean'])} +- {_num(r2['std'])}   "
            f"Pearson rho {_num(rho['mean'])} +- {_num(rho['std'])}"
        )
        heads = ", ".join(
            f"L{h['layer']}H{h['head']} {h['coef']:+.3f}" for h in summary["top_heads"][:5]
        )
        lines.append(f"top heads (mean coefficient): {heads}")
    if "heads_needed" in summary:
        needed = dict(summary["heads_needed"])
        f, c = needed.pop("faithfulness_above"), needed.pop("completeness_below")
        lines.append(f"heads needed for faithfulness > {f} and completeness < {c}:")
        width = max(map(len, needed))
        lines += [
            f"  {name:<{width}}  {'not reached' if k is None else k}" for name, k in needed.items()
        ]
    return "\n".join(lines)


def save_figures(
    result: HeadAttributionResult, out_dir: str | os.PathLike, *, caption: str | None = None
) -> list[Path]:
    """Draw the figures of the module doc into ``out_dir``; returns their paths.

    Nothing is drawn without a kept sample; the curves need an evaluated result.
    ``caption`` (model, question, settings, heads needed) is written above each figure.
    """
    out = Path(out_dir)
    if not result.fits:
        return []
    agg = result.aggregate
    n = len(result.fits)
    # attribution's own heatmap size is too small to read for a handful of heads.
    heatmap = Figure(
        figsize=(max(4.5, 1.5 + 0.25 * result.n_heads), max(3.0, 1.0 + 0.2 * result.n_layers)),
        layout="constrained",
    )
    ax = heatmap.add_subplot()
    plot_heatmap(result.mean, ax=ax, title=f"Head attribution (n={n})")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    figures = {
        "heatmap.png": heatmap,
        "scatter.png": plot_scatter(
            np.concatenate([f.y_test for f in result.fits]),
            np.concatenate([f.y_pred for f in result.fits]),
            r2=agg.r2_mean,
            pearson=agg.pearson_mean,
            title=f"Held-out normalized logit (n={n})",
        ),
    }
    if result.evaluation is not None:
        ev = result.evaluation
        for kind, curves in (
            ("faithfulness", ev.mean_faithfulness()),
            ("completeness", ev.mean_completeness()),
        ):
            figures[f"{kind}.png"] = plot_curves(
                ev.ks, curves, kind=kind, title=f"{kind.capitalize()} (mean over n={n})"
            )
    paths = []
    for filename, fig in figures.items():
        add_caption(fig, caption)
        paths.append(out / filename)
        with atomic_file(paths[-1]) as f:
            fig.savefig(f, format="png", dpi=150)
    return paths


def write_report(
    result: HeadAttributionResult,
    out_dir: str | os.PathLike,
    *,
    tokenizer=None,
    names: Sequence[str] | None = None,
    question: str | None = None,
) -> dict[str, Any]:
    """Write ``summary.json``, the figures and ``report.html`` into ``out_dir``; returns
    the summary.

    Args:
        question: the question asked, for the figures' captions; default the one in
            ``out_dir``'s ``samples.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The run's record names the model and reference images as the user gave them.
    record = read_record(out)
    model = reference = None
    if record is not None:
        model = record.settings.get("model")
        # Without --reference-images the mean is over the attributed images themselves.
        reference = record.settings.get("reference_images") or "the attributed images"
        question = record.question if question is None else question
    context = head_context(
        result, NO_QUESTION if question is None else question, model=model, reference=reference
    )
    summary = summarize(result, tokenizer=tokenizer, names=names)
    write_json(out / SUMMARY_NAME, summary)
    save_figures(result, out, caption=context.caption())
    data = ReportData(
        title=f"Head attribution: {context.model}",
        notes=[f"excluded {e['description']}" for e in summary["excluded"]],
    )
    if result.fits:
        heads, curves, fits = head_report(result, context, names)
        data.heads.append(heads)
        data.fits.append(fits)
        if curves is not None:
            data.curves.append(curves)
    else:
        data.notes.append("no sample was kept, so there is no attribution to show")
    write_html(data, out / HTML_NAME)
    return summary


def load_run(out_dir: str | os.PathLike) -> tuple[HeadAttributionResult, list[str] | None]:
    """The merged result of a ``tl-lvlm attribute`` directory, and its sample names.

    Raises:
        tl_lvlm.cli.common.CliError: in one line, what is missing or inconsistent: no
            results, stale or missing shards (:func:`tl_lvlm.cli.run_dir.report_files`), files
            that cannot be read or do not merge, or a ``samples.json`` that does not describe
            the results.
    """

    out = Path(out_dir)
    files, names = report_files(out)
    try:
        result = HeadAttributionResult.merge(files)
    except Exception as err:  # safetensors, JSON and shape errors alike: the files are the cause
        listed = ", ".join(f.name for f in files)
        raise CliError(f"{out}: cannot read or merge {listed}: {one_line(err)}") from None
    config = result.config
    ids = [*result.sample_ids.tolist(), *(e.sample_id for e in result.excluded)]
    n_samples = int(config["n_samples"])
    if ids and max(ids) >= n_samples:
        raise CliError(f"{out}: the results have sample id {max(ids)} in a run of {n_samples}")
    if names is None:
        return result, None
    if len(names) < n_samples:
        raise CliError(
            f"{out}: {SAMPLES_NAME} lists {len(names)} images but the results are of "
            f"{n_samples} samples, so they belong to another run; rerun tl-lvlm attribute"
        )
    # A run being extended lists more names than its last results have samples; the first
    # names are still theirs (an extension only appends), so the report stays right.
    settings = read_record(out).settings
    diffs = [
        f"{key}: {SAMPLES_NAME} {settings[key]!r}, results {config[key]!r}"
        for key in HeadAttributionConfig.result_keys()
        # "auto" masks and default ks are resolved in the results.
        if settings.get(key) not in (None, "auto") and settings[key] != config.get(key)
    ]
    if diffs:
        raise CliError(f"{out}: {SAMPLES_NAME} and the results disagree ({'; '.join(diffs)})")
    return result, names[:n_samples]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
