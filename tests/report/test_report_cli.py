"""``tl-lvlm report DIR`` writes report.html for an attribute run: opened in Chromium, its
heatmap shows the numbers of the run's own results, and every PNG names model, question,
settings and heads needed."""

from __future__ import annotations

import json

import numpy as np

import tl_lvlm.cli.report as cli_report
from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.cli import main

QUESTION = "What is in this image? Answer in a single word."


def test_report_command_writes_report_html(
    tiny_paths, tmp_path, monkeypatch, check_report_in_browser
):
    out = tmp_path / "run"
    argv = ["attribute", "--model", tiny_paths["mha"], "--images", "random", "--out", str(out),
            "--n-samples", "3", "--n-masks", "60", "--batch-size", "8", "--baseline", "zero",
            "--min-logit-gap", "0.01", "--seed", "4", "--question", QUESTION,
            "--quiet", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "report.html").is_file()
    (out / "report.html").unlink()

    captions = []

    def spy(fig, caption):
        captions.append(caption)
        return add_caption(fig, caption)

    add_caption = cli_report.add_caption
    monkeypatch.setattr(cli_report, "add_caption", spy)
    assert main(["report", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    needed = summary["heads_needed"]["head_attribution"]
    model = json.loads((out / "samples.json").read_text())["settings"]["model"]
    expected = f"{model} · {QUESTION!r} · 60 masks, p_ablate 0.75, zero baseline, seed 4"
    if needed is not None:
        expected += f" · heads needed {needed}"
    assert captions == [expected] * 4  # heatmap, scatter, faithfulness, completeness

    result = HeadAttributionResult.load(out / "results.safetensors")
    assert len(result.fits) >= 2
    seen = check_report_in_browser(out / "report.html", cells={"heatmap-1": (1, 2)})
    assert seen["console_errors"] == []
    # heatmap, per-sample chart, curves, fit quality
    assert [f["rendered"] for f in seen["figures"]] == [True] * 4
    for figure in seen["figures"]:
        assert figure["subtitle"].replace("<br>", " ").startswith(model)

    # The hover numbers, from the results file, computed here.
    coef = result.coef
    mean, std = coef.mean(0), coef.std(0)
    cells = [(layer, head) for layer in range(2) for head in range(4)]
    rank = {c: i + 1 for i, c in enumerate(sorted(cells, key=lambda c: (-mean[c], c)))}
    (hover,) = seen["heatmaps"]
    text = hover["hover"]
    assert f"head 1.2\nmean {mean[1, 2]:.4g}\nstd {std[1, 2]:.4g}\nrank {rank[1, 2]} of 8" in text
    np.testing.assert_allclose(hover["chart_after"]["y"], coef[:, 1, 2], rtol=1e-5, atol=1e-6)
    assert seen["screenshot"]["non_white"] > 0.05
