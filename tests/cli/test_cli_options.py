"""Global options before and after the command, flags reaching the API, silenced noise."""

from __future__ import annotations

import logging

import pytest
from cli_helpers import run_cli

import tl_lvlm.analysis.heads as head_attribution_module
from tl_lvlm.cli import build_parser, main

ATTRIBUTE = ["attribute", "--model", "m", "--images", "random", "--out", "o"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "2", "--quiet", "--device", "cpu", "--dtype", "bfloat16", *ATTRIBUTE],
        [*ATTRIBUTE, "--threads", "2", "--quiet", "--device", "cpu", "--dtype", "bfloat16"],
        [
            "--threads",
            "5",
            "--dtype",
            "float16",
            *ATTRIBUTE,
            "--threads",
            "2",
            "--quiet",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
        ],  # fmt: skip
    ],
)
def test_global_options_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.threads, args.quiet, args.device, args.dtype) == (2, True, "cpu", "bfloat16")


def test_global_option_defaults_on_every_command():
    for argv in (
        ATTRIBUTE,
        ["report", "d"],
        ["demo"],
        ["flow", *ATTRIBUTE[1:]],
        ["study", *ATTRIBUTE[1:]],
    ):
        args = build_parser().parse_args(argv)
        assert (args.threads, args.quiet, args.device, args.dtype) == (None, False, None, "auto")


def test_same_names_in_every_command():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    options = {name: set(p._option_string_actions) for name, p in commands.items()}
    for name in ("attribute", "flow", "study"):
        assert {
            "--n-samples",
            "--n-masks",
            "--baseline",
            "--reference-images",
            "--seed",
        } <= options[name]
    assert {"--n-samples", "--n-masks"} <= options["demo"]


def test_torchvision_fallback_warning_filtered_narrowly(caplog):
    from tl_lvlm.cli.common import setup_runtime

    setup_runtime(build_parser().parse_args(["report", "d"]))
    logger = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
        logger.warning("something else that the user should see")
    assert [r.getMessage() for r in caplog.records] == ["something else that the user should see"]


def test_flow_prints_no_warning_and_quiet_no_bar(tiny_paths, tmp_path):
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--n-samples", "2",
            "--experiments", "image_flow", "--window", "1", "--threads", "1"]  # fmt: skip
    loud = run_cli(*argv, "--out", tmp_path / "loud")
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr and "torchvision" not in loud.stderr
    quiet = run_cli(*argv, "--out", tmp_path / "quiet", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == loud.stdout.replace("loud", "quiet")


def test_attribute_flags_reach_the_api(monkeypatch, tiny_paths, tmp_path):
    seen = {}

    def spy(model, samples, config, *, on_sample_done, **kwargs):
        seen.update(kwargs, n_samples=len(samples), on_sample_done=on_sample_done)
        seen.update(batch_size=config.batch_size, n_masks=config.n_masks)
        raise KeyboardInterrupt  # stop there: only the call is checked

    monkeypatch.setattr(head_attribution_module, "head_attribution", spy)
    argv = ["attribute", "--model", tiny_paths["mha"], "--images", "random", "--n-samples", "2",
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 130
    assert seen["batch_size"] is None and seen["n_masks"] == 10_000 and seen["reference"] is None
    assert callable(seen["on_sample_done"]) and seen["n_samples"] == 2
    argv[argv.index("--out") + 1] = str(tmp_path / "other")  # other settings, another run
    assert main([*argv, "--n-masks", "auto", "--batch-size", "16", "--reference-images",
                 "random"]) == 130  # fmt: skip
    assert seen["n_masks"] == "auto" and seen["batch_size"] == 16 and len(seen["reference"]) == 8
