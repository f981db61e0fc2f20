"""A folder of six random images of six sizes through ``tl-lvlm attribute`` on the tiny
dynamic-resolution families (Qwen2.5-VL, LLaVA-NeXT, OneVision), with the default
(per-geometry mean) baseline, and on Qwen2.5-VL the zero baseline.

Before, the default was refused (``the reference inputs put the image at different spans``)
and so was ``--baseline zero`` (``baseline was built for image span ...``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tl_lvlm.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
from tiny_families import family_path, sized_images  # noqa: E402

#: (height, width) of the six images: six geometries (landscape and portrait included).
SHAPES = [(28, 28), (28, 56), (56, 28), (56, 56), (42, 70), (84, 28)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed") / "photos"
    folder.mkdir()
    for i, image in enumerate(sized_images(*SHAPES, seed=1)):
        image.save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize(
    ("family", "baseline"),
    [
        ("qwen2_5_vl", []),
        ("qwen2_5_vl", ["--baseline", "zero"]),
        ("llava_next", []),
        ("llava_onevision", []),
    ],
    ids=["qwen2_5_vl-default", "qwen2_5_vl-zero", "llava_next-default", "llava_onevision-default"],
)
def test_six_sizes_run_on_dynamic_resolution(folder, tmp_path, capsys, family, baseline):
    out = tmp_path / "run"
    # The random tiny model's gaps are small: kept with a zero --min-logit-gap.
    argv = ["attribute", "--model", family_path(family), "--images", str(folder),
            "--out", str(out), "--n-masks", "40", "--min-logit-gap", "0", "--no-evaluate",
            "--quiet", "--threads", "1", *baseline]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] + summary["n_excluded"] == len(SHAPES)
    assert summary["n_kept"] >= 1
    # Excluded only for gaps the normalization cannot use, never refused for their size.
    assert {e["reason"] for e in summary["excluded"]} <= {"small_gap"}
    expected = "mean-per-geometry:" if not baseline else "zero"
    assert str(summary["config"]["baseline"]).startswith(expected), summary["config"]


def test_image_size_gives_the_folder_one_geometry(folder, tmp_path, capsys):
    """``--image-size`` / ``image_size=``, the alternative to the per-geometry mean: every
    image (and so every prompt's image span) at one size."""
    from tl_lvlm import HookedLVLM
    from tl_lvlm.cli.image_sources import load_image_set

    path = family_path("qwen2_5_vl")
    images = load_image_set(folder).images
    model = HookedLVLM.from_pretrained(path, device="cpu")
    as_given = model.prepare(images, "What is it?")
    resized = model.prepare(images, "What is it?", image_size=(56, 42))
    assert len({len(as_given.positions("image", r)) for r in range(len(images))}) > 1
    assert len({len(resized.positions("image", r)) for r in range(len(images))}) == 1
    assert {image.size for image in resized.images} == {(56, 42)}

    out = tmp_path / "run"
    argv = ["attribute", "--model", path, "--images", str(folder), "--out", str(out),
            "--n-masks", "40", "--min-logit-gap", "0", "--no-evaluate", "--quiet",
            "--threads", "1", "--image-size", "56x42"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "samples.json").read_text())
    assert record["settings"]["image_size"] == [56, 42]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] + summary["n_excluded"] == len(SHAPES)
