"""``tl-lvlm study`` on the COCO fixture and the digit styles with the bundled model: what it
writes, that a rerun does no new work, shards, and one-line refusals that write nothing.

One study run (module fixture) serves most assertions; settings are tiny (4 images, 110
masks, 9-layer flow windows) so that the module stays within its time budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_error_line, tree_hashes

import tl_lvlm.analysis.heads as heads_module
import tl_lvlm.study.flows as flows_module
import tl_lvlm.study.image_maps as image_maps_module
from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.cli import main
from tl_lvlm.cli.study import question_slug
from tl_lvlm.study import findings as f
from tl_lvlm.testing.coco import write_digit_coco, write_digit_styles
from tl_lvlm.zoo.questions import TASKS

DIGITS = "tl-lvlm/tiny-digits"
QUESTIONS = (TASKS["object"].question, TASKS["ink"].question)
SMALL = ["--n-masks", "110", "--image-masks", "60", "--window", "9", "--n-seeds", "2",
         "--n-permutations", "200", "--baseline", "zero", "--quiet", "--threads", "1"]  # fmt: skip
PER_QUESTION = (f.REGRESSION, f.FEWER_HEADS, f.MID_TO_LATE, f.SEMANTICS, f.TEXT_FIRST, f.ROLE_FINAL)


def study(*argv) -> tuple[int, str, str]:
    """``tl-lvlm study ARGV`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        # As outside pytest: a library's DeprecationWarning is not the user's business.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            status = main(["study", "--model", DIGITS, *map(str, argv)])
        except SystemExit as exit:  # argparse's own errors
            status = exit.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_digit_coco(tmp_path_factory.mktemp("coco"), n_single=4, n_multi=2)


@pytest.fixture(scope="module")
def coco_argv(coco):
    questions = [arg for q in QUESTIONS for arg in ("--question", q)]
    return ["--images", coco.images, "--coco-annotations", coco.annotations, *questions, *SMALL]


@pytest.fixture(scope="module")
def coco_study(coco_argv, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    status, stdout, stderr = study(*coco_argv, "--out", out)
    assert status == 0, stderr
    return out, stdout


def findings_of(out: Path) -> list[dict]:
    return json.loads((out / "findings.json").read_text())["findings"]


def test_selection_leaves_out_every_multi_object_image(coco, coco_study):
    out, _ = coco_study
    selection = json.loads((out / "selection.json").read_text())
    assert selection["kept"] == [
        {"image": name, "label": label} for name, label in sorted(coco.single.items())
    ]
    excluded = {e["image"]: e["reason"] for e in selection["excluded"]}
    assert set(excluded) == set(coco.multi) and all(excluded.values())
    assert "objects: another instance is" in excluded["multi-0.png"]


def test_every_finding_is_there_with_a_verdict_or_a_reason(coco_study):
    out, stdout = coco_study
    rows = findings_of(out)
    for row in rows:
        assert set(row) == {"finding", "holds", "statistic", "n", "summary", "question"}
        assert row["holds"] in (True, False, None) and isinstance(row["n"], int)
        if row["holds"] is None:
            assert row["statistic"]["reason"] and row["summary"].startswith("not tested: ")
        else:
            assert row["summary"].startswith("holds: " if row["holds"] else "does not hold: ")
    for question in QUESTIONS:
        asked = [r["finding"] for r in rows if r["question"] == question]
        assert set(PER_QUESTION) <= set(asked), asked
    by_name = {r["finding"]: r for r in rows if r["question"] in (None, QUESTIONS[0])}
    # What these data can test is tested; what they cannot says why.
    assert by_name[f.OBJECT_BACKGROUND]["holds"] is not None  # the COCO segmentations
    assert by_name[f.TASK_SPECIFIC]["statistic"]["tasks"] == list(QUESTIONS)
    assert by_name[f.TASK_SPECIFIC]["holds"] is not None
    assert by_name[f.SEED_STABLE]["statistic"]["seeds"] == [0, 1]
    assert "--styles" in by_name[f.SEMANTICS]["statistic"]["reason"]
    assert f"findings.json and report.html in {out}" in stdout


def test_findings_are_the_numbers_of_the_run_directories(coco_study):
    out, _ = coco_study
    rows = findings_of(out)
    for question in QUESTIONS:
        # Each question's heads directory is an attribute run directory.
        heads_dir = out / "heads" / question_slug(question)
        result = HeadAttributionResult.load(heads_dir / "results.safetensors")
        assert json.loads((heads_dir / "samples.json").read_text())["question"] == question
        (fit,) = [r for r in rows if r["finding"] == f.REGRESSION and r["question"] == question]
        assert fit["statistic"]["median_r2"] == pytest.approx(float(np.median(result.r2)))
        assert fit["n"] == len(result.fits)
        (needed,) = [r for r in rows if r["finding"] == f.FEWER_HEADS and r["question"] == question]
        assert needed["statistic"]["heads_needed"] == result.heads_needed()
    seed_dir = out / "seeds" / question_slug(QUESTIONS[0]) / "seed-1"
    seed_run = HeadAttributionResult.load(seed_dir / "results.safetensors")
    assert seed_run.config["seed"] == 1 and not seed_run.config["evaluate"]


def test_the_report_renders_in_a_browser(coco_study, check_report_in_browser):
    out, _ = coco_study
    page = check_report_in_browser(out / "report.html")
    assert page["console_errors"] == []
    assert page["figures"] and all(fig["rendered"] for fig in page["figures"])
    assert len(page["heatmaps"]) == len(QUESTIONS)
    for heatmap in page["heatmaps"]:
        layer, head = heatmap["cell"]
        assert heatmap["hover"] and f"{layer}.{head}" in heatmap["hover"]
    assert page["screenshot"]["non_white"] > 0.01


def test_a_rerun_does_no_new_work_and_finds_the_same(coco_argv, coco_study, monkeypatch):
    out, _ = coco_study
    before = findings_of(out)
    work = {d: tree_hashes(out / d) for d in ("heads", "seeds", "flow", "image_tokens")}

    def no_work(*args, **kwargs):
        raise AssertionError("a finished study was run again")

    monkeypatch.setattr(heads_module, "head_attribution", no_work)
    monkeypatch.setattr(flows_module, "flow_sweep", no_work)
    monkeypatch.setattr(image_maps_module, "image_token_attribution", no_work)
    status, _, stderr = study(*coco_argv, "--out", out)
    assert status == 0, stderr
    assert findings_of(out) == before
    assert {d: tree_hashes(out / d) for d in work} == work


def test_a_rerun_with_other_settings_changes_nothing(coco_argv, coco_study, no_model_load):
    out, _ = coco_study
    before = tree_hashes(out)
    status, _, stderr = study(*coco_argv, "--out", out, "--window", "4")
    assert status == 2
    line = one_error_line(stderr, "tl-lvlm study")
    assert "holds a study with other settings (window 9 -> 4)" in line
    assert tree_hashes(out) == before


def test_report_of_a_study_directory_says_what_to_run(coco_study, capsys):
    out, _ = coco_study
    assert main(["report", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "tl-lvlm report")
    assert "is a tl-lvlm study directory: rerun the same tl-lvlm study command" in line


def test_styles_in_two_shards(tmp_path):
    dirs = write_digit_styles(tmp_path / "styles")
    out = tmp_path / "out"
    argv = ["--styles", *(f"{s}={d}" for s, d in dirs.items()), "--question", QUESTIONS[0],
            *SMALL, "--n-seeds", "1", "--out", out, "--n-shards", "2"]  # fmt: skip
    status, _, stderr = study(*argv, "--shard", "0")
    assert status == 0, stderr
    assert "shard 0 of 2 done; the study completes when every shard is" in stderr
    assert not (out / "findings.json").exists()
    status, _, stderr = study(*argv, "--shard", "1")
    assert status == 0, stderr
    heads_dir = out / "heads" / question_slug(QUESTIONS[0])
    shards = sorted(p.name for p in heads_dir.glob("results-shard-*"))
    assert shards == [
        "results-shard-000-of-002.safetensors",
        "results-shard-001-of-002.safetensors",
    ]
    rows = {r["finding"]: r for r in findings_of(out)}
    semantic = rows[f.SEMANTICS]
    assert semantic["holds"] is not None, semantic  # two styles of the same three digits
    assert semantic["n"] == rows[f.REGRESSION]["n"]
    assert rows[f.OBJECT_BACKGROUND]["holds"] is None  # style sets have no object masks
    assert (out / "report.html").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --images DIR (or a builtin set) or --styles STYLE=DIR ..., one of the two"),
        (["--styles", "photo=flat"], "--styles photo=flat: no class subfolders"),
        (["--images", "digits", "--question", ""], "--question '' is empty"),
        (["--images", "digits", "--question", "a?", "--question", "a?"], "given more than once"),
        (["--images", "digits", "--question"], "argument --question: expected one argument"),
        (["--images", "digits", "--n-seeds", "0"], "argument --n-seeds: must be >= 1, got 0"),
        (["--images", "nowhere"], "--images 'nowhere' is neither a directory nor"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(
    argv, message, tmp_path, monkeypatch, no_model_load
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    status, _, stderr = study(*argv, "--out", "out")
    assert status == 2
    assert message in one_error_line(stderr, "tl-lvlm study"), stderr
    assert not (tmp_path / "out").exists()
