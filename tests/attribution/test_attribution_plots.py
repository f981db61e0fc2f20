import numpy as np
import pytest
from matplotlib.figure import Figure

from attribution import plot_curves, plot_heatmap, plot_scatter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 2000


def test_heatmap_writes_png_with_symmetric_diverging_scale(tmp_path):
    coef = np.random.default_rng(0).normal(size=(6, 8)) + 0.5
    fig = plot_heatmap(coef, tmp_path / "heat.png", title="t")
    assert_png(tmp_path / "heat.png")
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo == -hi == -np.abs(coef).max()  # white is exactly 0 even for skewed data
    plot_heatmap(np.zeros((2, 3)), tmp_path / "zeros.png")
    assert_png(tmp_path / "zeros.png")


def test_curves_writes_png_with_one_line_per_ranking_and_threshold(tmp_path):
    ks = np.array([0, 1, 2, 4, 8])
    curves = {"attribution": [0, 0.5, 0.9, 1, 1], "random": [0, 0.1, 0.2, 0.5, 1]}
    fig = plot_curves(ks, curves, tmp_path / "f.png", kind="faithfulness")
    assert_png(tmp_path / "f.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and lines[2].get_ydata()[0] == 0.8
    fig = plot_curves(ks, curves, tmp_path / "c.png", kind="completeness")
    assert fig.axes[0].get_lines()[2].get_ydata()[0] == 0.2
    with pytest.raises(ValueError, match="kind"):
        plot_curves(ks, curves, kind="other")
    with pytest.raises(ValueError, match="shape"):
        plot_curves(ks, {"short": [0, 1]})


def test_scatter_writes_png_and_draws_on_given_axes(tmp_path):
    y = np.linspace(0, 1, 50)
    plot_scatter(y, y + 0.01, tmp_path / "s.png", r2=0.95, pearson=0.98)
    assert_png(tmp_path / "s.png")
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_scatter(y, y, ax=ax) is fig
    assert "0.950" not in " ".join(t.get_text() for t in ax.texts)
