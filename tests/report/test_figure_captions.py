"""The PNG figures say which model, question, settings and heads needed they show, and the
flow figure's curves stay visible when they coincide."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from attribution.plots import add_caption, wrap_caption
from tl_lvlm.analysis.image_tokens import plot_image_attribution
from tl_lvlm.flow import FlowSweep, plot_flow_sweep
from tl_lvlm.report.data import FigureContext

CONTEXT = FigureContext(
    "llava-hf/llava-1.5-7b-hf",
    "What is the main object in this image? Answer in a single word.",
    "10000 masks, p_ablate 0.75, mean baseline over coco/, seed 0",
    heads_needed=23,
)


def sweep(window: int, curves: dict[str, list[float]]) -> FlowSweep:
    """Two samples with clean logit 1, each edge set's knocked logits ``curves``."""
    knocked = {name: np.tile(np.asarray(v, float)[:, None], (1, 2)) for name, v in curves.items()}
    n = len(next(iter(curves.values())))
    return FlowSweep(window, list(range(n)), np.zeros(2, int), np.ones(2), knocked, {}, {})


def test_a_long_caption_is_wrapped_between_its_parts():
    caption = CONTEXT.caption()
    lines = wrap_caption(caption, 80)
    assert len(lines) > 1 and all(len(line) <= 80 for line in lines)
    assert " · ".join(lines) == caption
    # A part longer than a line is broken between words.
    assert wrap_caption("a long question here · s", 10) == ["a long", "question", "here · s"]
    assert caption.endswith("heads needed 23")
    fig = add_caption(Figure(figsize=(4, 3)), caption)
    assert fig.get_suptitle().replace("\n", " · ") == caption
    assert add_caption(Figure(), None).get_suptitle() == ""


def test_flow_figure_keeps_coinciding_curves_visible_and_says_one_layer():
    same = [1.0, 0.4, 1.0]
    fig = plot_flow_sweep(
        sweep(1, {"read by role, final only": same, "read by no text": same, "other": [0, 0, 1]}),
        caption=CONTEXT.caption(),
    )
    ax = fig.axes[0]
    first, second, third = ax.get_lines()[:3]
    np.testing.assert_array_equal(first.get_ydata(), second.get_ydata())
    # The curve drawn on top is thinner, with a smaller, hollow marker of another shape.
    assert first.get_linewidth() > second.get_linewidth()
    assert first.get_markersize() > second.get_markersize()
    assert second.get_markerfacecolor() == "none"
    styles = {(line.get_marker(), line.get_linestyle()) for line in (first, second, third)}
    assert len(styles) == 3
    assert ax.get_xlabel() == "first layer of the knockout window (window of 1 layer)"
    assert "heads needed 23" in fig.get_suptitle().replace("\n", " ")
    four = plot_flow_sweep(sweep(4, {"a": [1.0, 0.5]}))
    assert four.axes[0].get_xlabel().endswith("(window of 4 layers)")
    assert four.get_suptitle() == ""


def test_image_attribution_figure_carries_the_caption(tmp_path):
    image = np.zeros((28, 28, 3), np.uint8)
    fig = plot_image_attribution(np.eye(4), image, tmp_path / "map.png", caption=CONTEXT.caption())
    assert fig.get_suptitle().replace("\n", " · ") == CONTEXT.caption()
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
