"""``--images`` of a Hugging Face dataset saved with ``save_to_disk``, through ``tl-lvlm
attribute`` and ``tl-lvlm flow`` on the bundled tiny-digits model: its ClassLabel or string
column labels the rows, an unreadable row is skipped before the model loads, bad labels are
reported at once with their rows, and a multi-word label is checked whole."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from cli_helpers import one_error_line

from tl_lvlm import zoo
from tl_lvlm.cli import main
from tl_lvlm.zoo.digits import load_digit_images
from tl_lvlm.zoo.questions import DIGIT_WORDS

DIGITS = "tl-lvlm/tiny-digits"
VALUES = [7, 4, 2, 7]  # row 2's image is truncated
COMMON = ["--model", DIGITS, "--question", zoo.DIGITS_QUESTION, "--quiet", "--threads", "1"]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    images, values = load_digit_images(split="test", style="original")
    stored = [png(images[list(values).index(v)]) for v in VALUES]
    stored[2] = stored[2][: len(stored[2]) // 2]
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_WORDS)),
        "name": datasets.Value("string"), "bad": datasets.Value("string"),
    })  # fmt: skip
    rows = {
        "image": [{"bytes": b, "path": None} for b in stored],
        "label": VALUES,
        "name": ["seven", "four", "two", "seven seven"],
        "bad": ["Fourr", "four", "two", "sevens"],
    }
    path = tmp_path_factory.mktemp("hf") / "digits"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def skipped(saved: Path, prog: str) -> str:
    return f"{prog}: warning: --images {saved}: skipped row 2, not a readable image file ("


def test_attribute_reads_a_saved_dataset(saved, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["attribute", *COMMON, "--images", str(saved), "--out", str(out), "--n-masks", "120",
            "--baseline", "zero", "--no-evaluate", "--image-size", "28",
            "--n-samples", "2"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith(skipped(saved, "tl-lvlm attribute")) for line in err) == 1, err
    record = json.loads((out / "samples.json").read_text())
    assert record["names"] == ["row-0", "row-1"]  # the first 2 readable rows
    assert record["labels"] == ["seven", "four"]  # ClassLabel.int2str
    assert record["settings"]["image_size"] == [28, 28]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] == 2, summary["excluded"]  # each answered as its label names it


def test_flow_checks_a_string_columns_multi_word_label_whole(saved, tmp_path, capsys):
    out = tmp_path / "flow"
    argv = ["flow", *COMMON, "--images", str(saved), "--label-column", "name", "--out",
            str(out), "--experiments", "text_flow", "--window", "12",
            "--image-size", "30x20"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "flow.json").read_text())
    assert report["images"] == ["row-0", "row-1", "row-3"]
    # ' seven' is row 3's first token, but the model does not write "seven seven".
    assert report["experiments"]["text_flow"]["excluded"] == {
        "2": "wrong answer: writes ' seven', not 'seven seven'"
    }


def test_bad_labels_are_reported_at_once_with_their_rows(saved, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["attribute", *COMMON, "--images", str(saved), "--label-column", "bad", "--out",
            str(out), "--n-masks", "120"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err.splitlines()[-1])  # after the row-2 warning
    assert "--images: 2 of the labels in the dataset's column 'bad' cannot be attributed" in line
    assert "row-0: label/target 'Fourr' is" in line and "row-3: label/target 'sevens' is" in line
    assert not out.exists()


def test_dataset_mistakes_are_found_before_the_model_loads(saved, tmp_path, capsys, no_model_load):
    out = tmp_path / "run"

    def error(*extra: str, prog: str = "attribute") -> str:
        assert main([prog, *COMMON, "--out", str(out), *extra]) == 2
        assert not out.exists()
        return capsys.readouterr().err.splitlines()[-1]

    have = "its columns are 'image', 'label', 'name', 'bad'"
    assert error("--images", str(saved), "--image-column", "img").endswith(
        f"--images {saved}: the dataset has no column 'img'; {have}: set --image-column to the "
        "one with the images"
    )
    assert error("--images", str(saved), "--label-column", "image", prog="flow").endswith(
        "set --label-column to its label column (none for no labels), or cast this one to a "
        "ClassLabel (dataset.cast_column('image', datasets.ClassLabel(names=[...])))"
    )
    assert error("--images", "digits", "--image-column", "image").endswith(
        "--image-column chooses a column of a dataset saved with save_to_disk, but --images "
        "digits is not one; leave it out"
    )
    line = error("--images", str(saved), "--strict")
    assert f"--images {saved}: row 2 is not a readable image file (" in line
    assert line.endswith("fix the dataset, or leave out --strict to skip it with a warning")
    splits = tmp_path / "splits"
    datasets.load_from_disk(str(saved)).train_test_split(0.5, seed=0).save_to_disk(str(splits))
    assert error("--images", str(splits)).endswith(
        f"--images {splits} is a DatasetDict saved with save_to_disk (splits: test, train); "
        f"pass one split's directory, e.g. --images {splits / 'test'}"
    )
    for size, why in (
        ("0x3", "sides must be >= 1 pixel, got 0x3"),
        ("big", "must be W or WxH in pixels (e.g. 336 or 640x480), got 'big'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["flow", *COMMON, "--images", "digits", "--out", str(out), "--image-size", size])
        assert exit_.value.code == 2
        assert f"argument --image-size: {why}" in capsys.readouterr().err
