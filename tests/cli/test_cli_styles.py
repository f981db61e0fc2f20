"""Style sets: ``--styles STYLE=DIR ...`` with class subfolders, through ``tl-lvlm attribute``."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_error_line

from tl_lvlm import zoo
from tl_lvlm.cli import main
from tl_lvlm.testing.coco import write_digit_styles

DIGITS = "tl-lvlm/tiny-digits"


def test_styles_are_one_image_set_labelled_by_class(tmp_path, capsys):
    dirs = write_digit_styles(tmp_path / "styles")
    (dirs["original"] / "README.txt").write_text("loose file")
    out = tmp_path / "run"
    argv = ["attribute", "--model", DIGITS, "--styles",
            *(f"{style}={d}" for style, d in dirs.items()), "--out", str(out),
            "--question", zoo.DIGITS_QUESTION, "--n-masks", "120", "--baseline", "zero",
            "--no-evaluate", "--quiet", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"--styles original={dirs['original']}: ignored README.txt" in err, err
    record = json.loads((out / "samples.json").read_text())
    words = ["four", "one", "seven"]  # class folders, sorted
    assert record["names"] == [f"{s}/{w}/0.png" for s in ("original", "inverted") for w in words]
    assert record["labels"] == words * 2
    assert record["images"].startswith("styles:original=")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --images DIR (or a builtin set) or --styles STYLE=DIR ..., one of the two"),
        (["--images", "digits", "--styles", "a=x"], "one of the two"),
        (["--styles", "photo"], "argument --styles: must be STYLE=DIR (e.g. photo=data/photo)"),
        (["--styles", "a=x", "a=y"], "--styles names a more than once"),
        (["--styles", "a=nowhere"], "--styles a=nowhere: no such directory"),
    ],
)
def test_style_mistakes(argv, message, tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    try:
        status = main(["attribute", "--model", DIGITS, "--out", "run", *argv])
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
