"""report.html in a real headless Chromium: it loads without a console error, every figure
renders, hovering a head shows that head's numbers, clicking it redraws the per-sample chart,
the screenshot is not blank, and nothing from the data can inject markup."""

from __future__ import annotations

import html
import re

import numpy as np
from plotly.offline import get_plotlyjs

from tl_lvlm.report.data import (
    Curves,
    FigureContext,
    Finding,
    FitQuality,
    FlowCurves,
    HeadMap,
    ImageMap,
    ReportData,
)
from tl_lvlm.report.html import render_html, write_html

# Names that would run script if any of them reached the page unescaped.
EVIL_NAME = '<img src=x onerror="document.title=1">.png'
QUESTION = "Which digit is this? <script>document.title=2</script>"
N_LAYERS, N_HEADS, N_SAMPLES = 5, 7, 6


def synthetic_report() -> ReportData:
    """Every section, with numbers a study of a small model could give."""
    rng = np.random.default_rng(0)
    context = FigureContext(
        model="tl-lvlm/tiny-digits",
        question=QUESTION,
        settings="800 masks, p_ablate 0.75, mean baseline over digits, seed 0",
        heads_needed=9,
    )
    # Later layers matter more, as in the paper; every head differs.
    per_sample = rng.normal(size=(N_SAMPLES, N_LAYERS, N_HEADS)) * 0.02
    per_sample += np.linspace(0, 0.1, N_LAYERS)[None, :, None]
    mean = per_sample.mean(0)
    order = np.argsort(-mean.ravel(), kind="stable")
    rank = np.empty(mean.size)
    rank[order] = np.arange(1, mean.size + 1)
    rank = rank.reshape(mean.shape)
    names = [f"digit-{i}.png" for i in range(N_SAMPLES - 1)] + [EVIL_NAME]
    ks = np.array([0, 1, 2, 4, 8, 16, 35], dtype=float)
    curves = Curves(
        context=context,
        ks=ks,
        faithfulness={"head_attribution": 1 - np.exp(-ks / 4), "random": ks / 35},
        completeness={"head_attribution": np.exp(-ks / 4), "random": 1 - ks / 35},
        heads_needed={"head_attribution": 9, "random": None},
    )
    fits = FitQuality(context, rng.uniform(0.7, 0.95, N_SAMPLES), rng.uniform(0.85, 0.98, 6), names)
    flow_context = FigureContext("tl-lvlm/tiny-digits", QUESTION, "window of 1 layer, 6 samples")
    same = np.array([1.0, 0.6, 0.8, 1.0, 1.0])  # two edge sets with the same curve
    flow = FlowCurves(
        flow_context,
        "image_flow",
        ["0", "1", "2", "3", "4"],
        {"read by role, final only": same, "read by question only": same.copy()},
    )
    image = np.zeros((56, 56, 3), np.uint8)
    image[10:46, 20:36] = 255
    maps = [
        ImageMap(context, EVIL_NAME, image, rng.normal(size=(4, 4)), object_share=0.4),
        ImageMap(context, "digit-1.png", 255 - image, rng.normal(size=(4, 4))),
    ]
    findings = [
        Finding("Important heads sit in mid-to-late layers", True, {"share": 0.8}, 6, "80%"),
        Finding("Head selection follows semantics, not appearance", None, {}, 0, "no styles"),
        Finding("Only role/final tokens reading the image keeps most of it", False, {}, 6),
    ]
    heads = HeadMap(context, mean, per_sample.std(0), rank, per_sample, names)
    return ReportData("Study of <tiny-digits>", findings, [heads], [curves], [fits], [flow], maps)


def test_the_report_works_in_a_real_browser(tmp_path, check_report_in_browser):
    data = synthetic_report()
    heads = data.heads[0]
    path = write_html(data, tmp_path / "report.html")
    cell = (3, 1)  # not the middle cell, and not symmetric: a transposed map would fail
    seen = check_report_in_browser(path, cells={"heatmap-1": cell})

    assert seen["console_errors"] == []
    # heatmap and its per-sample chart, curves, fit quality, one flow, two image maps
    assert len(seen["figures"]) == 7, seen["figures"]
    assert all(f["rendered"] for f in seen["figures"]), seen["figures"]
    for figure in seen["figures"]:
        subtitle = figure["subtitle"].replace("<br>", " ")
        assert "tl-lvlm/tiny-digits" in subtitle and html.escape(QUESTION) in subtitle
        assert ("heads needed 9" in subtitle) == (figure["title"] != "image_flow"), figure

    (hover,) = seen["heatmaps"]
    layer, head = hover["cell"]
    assert (layer, head) == cell
    text = hover["hover"]
    assert f"head {layer}.{head}" in text, text
    assert f"mean {heads.mean[layer, head]:.4g}" in text, text
    assert f"std {heads.std[layer, head]:.4g}" in text, text
    assert f"rank {int(heads.rank[layer, head])} of {N_LAYERS * N_HEADS}" in text, text

    # The chart starts on the top head and shows the clicked head after the click.
    top = np.unravel_index(np.argmin(heads.rank), heads.rank.shape)
    np.testing.assert_allclose(hover["chart_before"]["y"], heads.per_sample[:, top[0], top[1]])
    np.testing.assert_allclose(
        hover["chart_after"]["y"], heads.per_sample[:, layer, head], rtol=1e-5, atol=1e-6
    )
    assert hover["chart_after"]["title"].startswith(f"Head {layer}.{head} on each sample")

    shot = seen["screenshot"]
    assert shot["n_colours"] > 200 and shot["non_white"] > 0.05, shot
    # The evil names were shown as text: no <img> element, no script ran.
    assert seen["html_images"] == 0
    assert seen["document_title"] == data.title


def test_the_page_is_self_contained_and_escapes_the_data():
    page = render_html(synthetic_report())
    # Offline: Plotly's bundle is embedded once, and nothing else loads from elsewhere (the
    # bundle's own strings hold links, used only by features the report does not use).
    assert page.count(get_plotlyjs()) == 1
    ours = page.replace(get_plotlyjs(), "")
    assert "plotly.js v" not in ours
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours)
    assert not re.search(r"""<script[^>]+src""", ours)
    for raw in (EVIL_NAME, QUESTION, "<tiny-digits>"):
        assert raw not in page
    assert f"<h1>{html.escape('Study of <tiny-digits>')}</h1>" in page
    assert "does not hold" in page and "not tested" in page


def test_sections_without_data_are_left_out():
    data = synthetic_report()
    only_flow = ReportData("flows", flows=data.flows)
    page = render_html(only_flow)
    assert page.count('class="plotly-graph-div"') == 1
    for heading in ("Findings", "Question", "Image-token attribution"):
        assert f"<h2>{heading}" not in page
    assert "<h2>Token flow" in page
    assert 'class="plotly-graph-div"' not in render_html(ReportData("empty"))
