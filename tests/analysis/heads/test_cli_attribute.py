"""``tl-lvlm attribute`` / ``report`` / ``demo`` on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.cli import main
from tl_lvlm.cli.report import FIGURES
from tl_lvlm.testing import random_images

pytest_plugins = ["planted_llava"]


def attribute(model: str, out: Path, *extra: str) -> int:
    argv = ["attribute", "--model", model, "--out", str(out), "--n-masks", "40", "--quiet"]
    return main([*argv, "--images", "random", "--n-samples", "3", "--seed", "4", *extra])


@pytest.fixture(scope="module")
def single_run(planted_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "single"
    assert attribute(planted_path, out) == 0
    return out


def test_attribute_writes_results_summary_and_figures(single_run, planted_path):
    out = single_run
    names = {p.name for p in out.iterdir()}
    assert {"results.safetensors", "summary.json", "samples.json", "store", *FIGURES} <= names
    for figure in FIGURES:
        with Image.open(out / figure) as img:
            assert img.format == "PNG" and img.size[0] > 300
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"] == planted_path and summary["config"]["n_masks"] == 40
    assert summary["n_kept"] + summary["n_excluded"] == 3
    assert 0 < summary["r2"]["mean"] <= 1
    assert summary["samples"][0]["name"] == "random-0"
    assert set(summary["heads_needed"]) >= {"head_attribution", "single_head", "random"}
    assert len(summary["curves"]["ks"]) == len(summary["curves"]["faithfulness"]["random"])
    samples = json.loads((out / "samples.json").read_text())
    assert samples["names"] == ["random-0", "random-1", "random-2"]
    result = HeadAttributionResult.load(out / "results.safetensors")
    assert result.coef.shape == (summary["n_kept"], 2, 4)


def test_report_redraws_summary_and_figures(single_run, capsys):
    before = json.loads((single_run / "summary.json").read_text())
    for name in ("summary.json", *FIGURES):
        (single_run / name).unlink()
    assert main(["report", str(single_run)]) == 0
    assert all((single_run / name).exists() for name in FIGURES)
    assert json.loads((single_run / "summary.json").read_text()) == before
    assert "heads needed for faithfulness > 0.8 and completeness < 0.2" in capsys.readouterr().out


def test_sharded_attribute_then_report_equals_single_run(single_run, planted_path, tmp_path):
    for shard in ("0", "1"):
        assert attribute(planted_path, tmp_path, "--shard", shard, "--n-shards", "2") == 0
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == ["results-shard-000-of-002.safetensors", "results-shard-001-of-002.safetensors"]
    assert not (tmp_path / "summary.json").exists()  # left to `report`
    assert main(["report", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged == json.loads((single_run / "summary.json").read_text())
    a = HeadAttributionResult.merge([tmp_path])
    b = HeadAttributionResult.load(single_run / "results.safetensors")
    np.testing.assert_array_equal(a.coef, b.coef)


def test_image_directory_with_labels(planted_path, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(random_images(2, 28, seed=4)):
        img.save(images / f"img{i}.png")
    (images / "labels.json").write_text(json.dumps({"img1.png": "object"}))
    out = tmp_path / "out"
    assert main(["attribute", "--model", planted_path, "--images", str(images), "--out",
                 str(out), "--n-masks", "40", "--no-evaluate", "--quiet"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    excluded = {e["name"]: e for e in summary["excluded"]}
    assert excluded["img1.png"]["reason"] == "wrong_answer"
    assert "curves" not in summary and not (out / "faithfulness.png").exists()
    assert (out / "heatmap.png").exists() or summary["n_kept"] == 0


def test_user_errors_exit_2_with_a_message(planted_path, tmp_path, capsys):
    assert main(["attribute", "--model", planted_path, "--images", "nope", "--out",
                 str(tmp_path)]) == 2  # fmt: skip
    assert "neither a directory nor a builtin image set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser
        attribute(planted_path, tmp_path, "--p-ablate", "1.5")
    assert exit_info.value.code == 2
    assert "--p-ablate: must be strictly between 0 and 1" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no results*.safetensors files" in capsys.readouterr().err


def test_demo_runs_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-samples", "2", "--n-masks", "120", "--quiet"]) == 0
    # The demo is the study on the digits written as COCO: it ends at its report.
    assert (out / "study" / "findings.json").exists()
    printed = capsys.readouterr()
    assert printed.out.rstrip().endswith(str(out / "study" / "report.html"))
    assert "warning" not in printed.err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("attribute", "report", "demo", "flow"):
        assert command in help_text


def test_threads_option_sets_torch_threads(monkeypatch, tmp_path):
    import torch

    from tl_lvlm.cli import main

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    # The report of an empty directory fails, after the threads are set.
    assert main(["--threads", "3", "report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path), "--threads", "2"]) == 2
    assert seen == [3, 2]
    with pytest.raises(SystemExit) as err:
        main(["--threads", "0", "demo"])
    assert err.value.code == 2
    assert seen == [3, 2]
