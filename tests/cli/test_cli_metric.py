"""``--metric`` / ``--foil`` of ``tl-lvlm attribute`` and ``flow``: recorded, checked, refused."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_error_line, tree_hashes

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation.metric import METRICS
from tl_lvlm.analysis.heads import HeadAttributionResult, answer_token_id
from tl_lvlm.cli import main
from tl_lvlm.cli.common import METRIC_CHOICES


def attribute_argv(model: str, out, *extra: str) -> list[str]:
    return ["attribute", "--model", model, "--images", "random", "--out", str(out),
            "--n-samples", "1", "--n-masks", "20", "--min-logit-gap", "0", "--baseline", "zero",
            "--no-evaluate",
            "--quiet", *extra]  # fmt: skip


def test_metric_choices_are_the_named_metrics():
    assert METRIC_CHOICES == METRICS  # the parser names them without importing torch


def test_attribute_records_the_metric_and_refuses_a_rerun_with_another(
    tiny_paths, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(attribute_argv(tiny_paths["mha"], out, "--metric", "logprob")) == 0
    result = HeadAttributionResult.load(out / "results.safetensors")
    assert result.config["metric"] == "logprob" and result.config["foils"] is None
    assert result.clean_logit[0] < 0  # a log-probability, not a logit
    assert json.loads((out / "samples.json").read_text())["settings"]["metric"] == "logprob"
    before = tree_hashes(out)
    capsys.readouterr()
    assert main(attribute_argv(tiny_paths["mha"], out)) == 2
    assert "metric 'logprob' -> 'logit'" in one_error_line(capsys.readouterr().err)
    assert tree_hashes(out) == before


def test_flow_takes_a_foil_word(tiny_paths, tmp_path):
    model = HookedLVLM.from_pretrained(tiny_paths["mha"], device="cpu")
    foil = answer_token_id(model, "the")
    out = tmp_path / "flow"
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--n-samples", "2",
            "--window", "2", "--experiments", "image_flow", "--out", str(out), "--quiet",
            "--metric", "logit_diff", "--foil", "the"]  # fmt: skip
    assert main(argv) == 0
    sweep = json.loads((out / "flow.json").read_text())["experiments"]["image_flow"]
    assert (sweep["metric"], sweep["foils"]) == ("logit_diff", [foil, foil])
    assert sweep["normalization"] == "logit_diff(knocked) / logit_diff(clean)"


@pytest.mark.parametrize(
    "command, options, message",
    [
        (
            "attribute",
            ["--foil", "the"],
            "--foil goes with --metric logit_diff, not --metric logit",
        ),
        ("attribute", ["--metric", "logit_diff"], "--metric logit_diff needs --foil WORD"),
        ("flow", ["--metric", "logprob", "--foil", "the"], "not --metric logprob"),
    ],
)
def test_foil_mistakes_are_found_before_the_model_loads(
    tiny_paths, tmp_path, capsys, no_model_load, command, options, message
):
    out = tmp_path / "out"
    argv = [command, "--model", tiny_paths["mha"], "--images", "random", "--out", str(out)]
    assert main([*argv, *options]) == 2
    assert message in one_error_line(capsys.readouterr().err, f"tl-lvlm {command}")
    assert not out.exists()
