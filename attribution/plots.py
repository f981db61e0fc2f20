"""Figures for attribution results.

Each function draws on ``ax`` when one is given, otherwise on a new figure; it saves
the figure to ``path`` when one is given, and returns the figure. Figures are built
with ``matplotlib.figure.Figure`` (rendered by Agg when saved), never through pyplot,
so they neither change the global backend nor accumulate in pyplot's figure list.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

from attribution.own_checks import checks_own_arguments

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_THRESHOLDS = {"faithfulness": 0.8, "completeness": 0.2}


def plot_heatmap(
    coef: ArrayLike,
    path: str | os.PathLike | None = None,
    *,
    title: str = "Head attribution",
    ax: Axes | None = None,
    xlabel: str = "head",
    ylabel: str = "layer",
    colorbar_label: str = "coefficient",
) -> Figure:
    """Layer x head heatmap of ``coef`` ``[n_layers, n_heads]``.

    Diverging colormap centered at 0: red = keeping the head raises the output, blue =
    lowers it; the color limits are symmetric so that white is exactly 0.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim != 2:
        raise ValueError(f"coef must be 2-D [n_layers, n_heads], got shape {coef.shape}")
    fig, ax = new_figure(ax, figsize=(1.5 + 0.25 * coef.shape[1], 1.0 + 0.2 * coef.shape[0]))
    vmax = float(np.nanmax(np.abs(coef))) or 1.0
    image = ax.imshow(
        coef,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        origin="lower",
    )
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return save_figure(fig, path)


@checks_own_arguments
def plot_curves(
    ks: ArrayLike,
    curves: Mapping[str, ArrayLike],
    path: str | os.PathLike | None = None,
    *,
    kind: Literal["faithfulness", "completeness"] = "faithfulness",
    threshold: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One line per ranking: output vs. number k of top components kept or ablated.

    Args:
        ks: ``[n_points]`` values of k shared by all curves.
        curves: ranking name -> ``[n_points]`` values.
        kind: "faithfulness" (top-k kept) or "completeness" (top-k ablated); sets the
            labels and the default threshold (0.8 or 0.2, drawn as a dashed line).
        threshold: override the threshold line; ``float("nan")`` draws none.
    """
    if kind not in DEFAULT_THRESHOLDS:
        raise ValueError(f"kind must be 'faithfulness' or 'completeness', got {kind!r}")
    ks = np.asarray(ks)
    fig, ax = new_figure(ax, figsize=(5, 3.5))
    for name, values in curves.items():
        values = np.asarray(values)
        if values.shape != ks.shape:
            raise ValueError(f"curve {name!r} has shape {values.shape}, ks has {ks.shape}")
        ax.plot(ks, values, marker=".", label=name)
    threshold = DEFAULT_THRESHOLDS[kind] if threshold is None else threshold
    if np.isfinite(threshold):
        ax.axhline(
            threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
        )
    action = "kept" if kind == "faithfulness" else "ablated"
    ax.set(
        title=title or kind.capitalize(),
        xlabel=f"top-k components {action}",
        ylabel="normalized output",
    )
    ax.legend()
    return save_figure(fig, path)


def plot_scatter(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    path: str | os.PathLike | None = None,
    *,
    r2: float | None = None,
    pearson: float | None = None,
    title: str = "Held-out predictions",
    ax: Axes | None = None,
) -> Figure:
    """Predicted vs. actual outputs (e.g. ``FitResult.y_pred`` vs ``y_test``) with the diagonal."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {y_true.shape}, {y_pred.shape}"
        )
    fig, ax = new_figure(ax, figsize=(4, 4))
    ax.scatter(y_true, y_pred, s=6, alpha=0.5)
    if y_true.size:
        lo = float(min(y_true.min(), y_pred.min()))
        hi = float(max(y_true.max(), y_pred.max()))
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel="actual", ylabel="predicted")
    stats = []
    if r2 is not None:
        stats.append(f"$R^2$ = {r2:.3f}")
    if pearson is not None:
        stats.append(f"ρ = {pearson:.3f}")
    if stats:
        ax.text(0.03, 0.97, "\n".join(stats), transform=ax.transAxes, va="top")
    return save_figure(fig, path)


def wrap_caption(caption: str, width: int) -> list[str]:
    """``caption`` in lines of at most ``width`` characters, broken between its ``" · "``
    parts where it can (a part longer than a line is wrapped between words)."""
    lines: list[str] = []
    for part in caption.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines += textwrap.wrap(part, width) or [""]
    return lines or [""]


def add_caption(fig: Figure, caption: str | None, *, fontsize: float = 7) -> Figure:
    """Write ``caption`` (what the figure shows: e.g. model, question, settings) in small
    gray type above the figure's panels, wrapped to the figure's width; None adds nothing.

    It is the figure's ``suptitle``, so that constrained layout makes room for it.
    """
    if caption:
        # Characters per line: the figure's width in points over an average glyph width.
        width = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
        fig.suptitle("\n".join(wrap_caption(caption, width)), fontsize=fontsize, color="0.3")
    return fig


def new_figure(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure when given, else a new constrained-layout figure and its axes."""
    # Imported here: importing attribution (or tl_lvlm) does not load matplotlib.
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` to ``path`` (PNG at 150 dpi) when a path is given; return it."""
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
