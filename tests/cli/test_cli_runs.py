"""Runs are never damaged: reruns resume, extend or are refused untouched; report checks; Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import CLI, run_cli, tree_hashes

import tl_lvlm.analysis.heads as head_attribution_module
from tl_lvlm import HookedLVLM
from tl_lvlm.analysis.heads import HeadAttributionResult, head_attribution
from tl_lvlm.cli import main
from tl_lvlm.testing import random_images

QUESTION = "What is the main object in this image? Answer in a single word."


def attribute_argv(model: str, out: Path, *extra: str) -> list[str]:
    # The random tiny model's gaps are small (0.01-0.2): kept with a small --min-logit-gap.
    return ["attribute", "--model", model, "--images", "random", "--out", str(out),
            "--n-masks", "60", "--batch-size", "8", "--min-logit-gap", "0.01", "--seed", "4",
            "--no-evaluate", "--quiet", "--threads", "1", *extra]  # fmt: skip


def results(out: Path) -> HeadAttributionResult:
    return HeadAttributionResult.load(out / "results.safetensors")


def assert_same_results(a: HeadAttributionResult, b: HeadAttributionResult) -> None:
    np.testing.assert_array_equal(a.sample_ids, b.sample_ids)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert [e.sample_id for e in a.excluded] == [e.sample_id for e in b.excluded]


@pytest.fixture(scope="module")
def model_dir(tiny_paths) -> str:
    return tiny_paths["mha"]


@pytest.fixture(scope="module")
def two_sample_run(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "two"
    assert main(attribute_argv(model_dir, out, "--n-samples", "2")) == 0
    return out


@pytest.fixture
def run_copy(two_sample_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(two_sample_run, out)
    return out


def test_refused_reruns_leave_every_file_byte_identical(model_dir, run_copy, tmp_path, capsys):
    before = tree_hashes(run_copy)
    other_images = tmp_path / "other"
    other_images.mkdir()
    random_images(1, 28, seed=9)[0].save(other_images / "a.png")
    reruns = {
        ("--n-samples", "2", "--n-masks", "70"): "n_masks 60 -> 70",
        ("--n-samples", "2", "--seed", "5"): None,  # seed is in the common argv; overridden
        ("--n-samples", "2", "--baseline", "zero"): "baseline 'mean' -> 'zero'",
        ("--n-samples", "2", "--dtype", "bfloat16"): "dtype 'float32' -> 'bfloat16'",
        ("--n-samples", "2", "--question", "What is it?"): "question",
        ("--n-samples", "2", "--min-logit-gap", "0.02"): "min_logit_gap 0.01 -> 0.02",
        # More samples would change the mean baseline, taken over the attributed images.
        ("--n-samples", "3"): "the mean baseline is taken over the attributed images",
        # The first of the run's samples: said so, with the flag that resumes it.
        ("--n-samples", "1"): "holds a run of 2 samples; this command has its first 1, and a "
        "run does not shrink; nothing was changed: rerun with --n-samples 2 to resume it",
    }
    capsys.readouterr()
    for extra, message in reruns.items():
        assert main(attribute_argv(model_dir, run_copy, *extra)) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nothing was changed" in err, err
        assert message is None or message in err, err
        assert tree_hashes(run_copy) == before, extra
    argv = attribute_argv(model_dir, run_copy, "--n-samples", "2")
    argv[argv.index("--images") + 1] = str(other_images)
    proc = run_cli(*argv)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"images 'random' -> '{other_images}'" in proc.stderr
    assert tree_hashes(run_copy) == before
    # The run is still whole: report works, and the same command resumes it.
    assert main(["report", str(run_copy)]) == 0
    assert main(attribute_argv(model_dir, run_copy, "--n-samples", "2")) == 0
    assert "resuming the run in" in capsys.readouterr().err


def test_more_samples_extend_a_run_with_a_fixed_baseline(model_dir, tmp_path, capsys):
    fixed = ("--reference-images", "random")
    extended, fresh = tmp_path / "extended", tmp_path / "fresh"
    assert main(attribute_argv(model_dir, extended, "--n-samples", "2", *fixed)) == 0
    capsys.readouterr()
    assert main(attribute_argv(model_dir, extended, "--n-samples", "3", *fixed)) == 0
    assert re.search(
        r"extending the run in .*extended: \d of 3 samples already collected",
        capsys.readouterr().err,
    )
    assert main(attribute_argv(model_dir, fresh, "--n-samples", "3", *fixed)) == 0
    assert len(results(extended).sample_ids) + len(results(extended).excluded) == 3
    assert_same_results(results(extended), results(fresh))
    names = json.loads((extended / "samples.json").read_text())["names"]
    assert names == ["random-0", "random-1", "random-2"]


def test_report_while_an_extension_is_unfinished(model_dir, tmp_path, capsys, monkeypatch):
    fixed = ("--baseline", "zero")
    out = tmp_path / "run"
    assert main(attribute_argv(model_dir, out, "--n-samples", "2", *fixed)) == 0
    summary = json.loads((out / "summary.json").read_text())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(head_attribution_module, "head_attribution", interrupted)
    capsys.readouterr()
    assert main(attribute_argv(model_dir, out, "--n-samples", "3", *fixed)) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        # The 2 of the last run are stored: the rerun resumes them.
        "interrupted: 2 of 3 samples collected; rerun the same command to resume"
    )
    # samples.json lists 3 samples, results.safetensors still holds the 2 of the last run.
    assert len(json.loads((out / "samples.json").read_text())["names"]) == 3
    (out / "summary.json").unlink()
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary


def test_report_says_what_is_inconsistent(two_sample_run, tmp_path, capsys):
    def report_error(out: Path) -> str:
        capsys.readouterr()
        assert main(["report", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tl-lvlm report: error: "), err
        return err

    # samples.json of another run (the IndexError of old).
    other = tmp_path / "other"
    shutil.copytree(two_sample_run, other)
    record = json.loads((other / "samples.json").read_text())
    record.update(names=record["names"][:1], labels=None)
    (other / "samples.json").write_text(json.dumps(record))
    assert "samples.json lists 1 images but the results are of 2 samples" in report_error(other)

    # Results of two layouts, and nothing saying which one is current.
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(two_sample_run / "results.safetensors", stale)
    shutil.copy(
        two_sample_run / "results.safetensors", stale / "results-shard-000-of-002.safetensors"
    )
    assert "several layouts (unsharded, 2 shards)" in report_error(stale)
    (stale / "results.safetensors").unlink()
    assert "shards 1 of 2 have no results file yet" in report_error(stale)

    damaged = tmp_path / "damaged"
    shutil.copytree(two_sample_run, damaged)
    (damaged / "results.safetensors").write_bytes(b"\x00" * 100)
    assert "cannot read or merge results.safetensors" in report_error(damaged)
    assert "no results*.safetensors files" in report_error(tmp_path)


def test_reference_images_are_the_api_reference(model_dir, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, image in enumerate(random_images(5, 28, seed=11)):
        image.save(refs / f"r{i}.png")
    out = tmp_path / "run"
    assert (
        main(attribute_argv(model_dir, out, "--n-samples", "1", "--reference-images", str(refs)))
        == 0
    )
    model = HookedLVLM.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    api = head_attribution(
        model,
        [(random_images(1, 28, seed=4)[0], QUESTION)],
        reference=random_images(5, 28, seed=11),
        n_masks=60,
        min_logit_gap=0.01,
        seed=4,
        batch_size=8,
        evaluate=False,
        progress=False,
    )
    cli = results(out)
    assert cli.config["baseline"] == api.config["baseline"]  # mean over the same 5 images
    assert_same_results(cli, api)


def test_dtype_reaches_from_pretrained(model_dir, tmp_path, monkeypatch):
    loaded = []
    original = HookedLVLM.from_pretrained.__func__

    def spy(cls, name, **kwargs):
        loaded.append(kwargs["dtype"])
        return original(cls, name, **kwargs)

    monkeypatch.setattr(HookedLVLM, "from_pretrained", classmethod(spy))
    out, zero = tmp_path / "bf16", ("--n-samples", "1", "--baseline", "zero")
    assert main(attribute_argv(model_dir, out, *zero, "--dtype", "bfloat16")) == 0
    assert main(attribute_argv(model_dir, tmp_path / "auto", *zero)) == 0
    assert loaded == ["bfloat16", "auto"]
    assert json.loads((out / "samples.json").read_text())["settings"]["dtype"] == "bfloat16"
    auto = json.loads((tmp_path / "auto" / "samples.json").read_text())["settings"]["dtype"]
    assert auto == "float32"  # auto on CPU


def test_ctrl_c_exits_130_and_the_rerun_resumes_to_the_same_results(model_dir, tmp_path):
    # Enough masks in small batches that the run is mid-sample when SIGINT arrives; the zero
    # baseline, so that no warning about a mean over few images joins the output.
    argv = attribute_argv(model_dir, tmp_path / "run", "--n-samples", "3", "--baseline", "zero")
    argv[argv.index("--n-masks") + 1] = "600"
    out = tmp_path / "run"

    # A shell running the suite in the background (`make test &`, nohup) ignores SIGINT, and an
    # ignored signal survives exec: give the child the default, as an interactive terminal does.
    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    child = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=os.environ.copy(),
                             preexec_fn=default_sigint)  # fmt: skip
    deadline = time.monotonic() + 300
    while not any(p.is_file() for p in (out / "store").rglob("*")):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    # --quiet: nothing else on stderr, no bar, no warning, no traceback.
    interrupted = re.fullmatch(
        r"interrupted: ([0-2]) of 3 samples collected; rerun the same command to resume\n", stderr
    )
    assert interrupted, stderr
    assert not (out / "results.safetensors").exists()

    rerun = run_cli(*argv)
    assert rerun.returncode == 0, rerun.stderr
    # The resumed run counts what the interrupted one said it had.
    assert re.fullmatch(
        rf"resuming the run in {re.escape(str(out))}: {interrupted[1]} of 3 samples already "
        r"collected\n",
        rerun.stderr,
    ), rerun.stderr
    uninterrupted = tmp_path / "uninterrupted"
    argv[argv.index("--out") + 1] = str(uninterrupted)
    assert main(argv) == 0
    assert_same_results(results(out), results(uninterrupted))


def test_outputs_respect_the_umask(model_dir, tmp_path):
    out = tmp_path / "run"
    argv = attribute_argv(model_dir, out, "--n-samples", "2")
    proc = run_cli(*argv, preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes and all(
        mode == (0o750 if (out / name).is_dir() else 0o640) for name, mode in modes.items()
    ), modes
