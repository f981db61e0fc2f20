"""``tl-lvlm flow``: sweeps and image-token maps from the command line, written to --out."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tl_lvlm.cli import build_parser, main
from tl_lvlm.cli.flow import EXPERIMENTS, flow_command
from tl_lvlm.flow import PAPER_EDGE_SETS
from tl_lvlm.testing import random_images


def _run(argv: list[str]) -> int:
    assert build_parser().parse_args(argv).func is flow_command
    return main([*argv, "--quiet"])


def test_experiment_choices_are_the_papers():
    # The parser names them without importing tl_lvlm.flow (and torch).
    assert EXPERIMENTS == tuple(PAPER_EDGE_SETS)


def test_builtin_random_images(tiny_paths, tmp_path):
    out = tmp_path / "out"
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--n-samples", "3"]
    assert _run([*argv, "--out", str(out), "--window", "1"]) == 0
    report = json.loads((out / "flow.json").read_text())
    assert list(report["experiments"]) == list(PAPER_EDGE_SETS)
    for experiment, edge_sets in PAPER_EDGE_SETS.items():
        png = out / f"flow_{experiment}.png"
        assert png.stat().st_size > 1000
        assert set(report["experiments"][experiment]["curves"]) == set(edge_sets)
    assert report["image_attribution"] == {}


def test_image_dir_with_attribution_and_object_masks(tiny_paths, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, image in enumerate(random_images(3, 28, seed=2)):
        image.save(images / f"img{i}.png")
        mask = np.zeros((28, 28), np.uint8)
        mask[7:21, 7:21] = 255
        Image.fromarray(mask).save(masks / f"img{i}.png")
    out = tmp_path / "out"
    argv = ["flow", "--model", tiny_paths["gqa"], "--images", str(images), "--out", str(out)]
    argv += ["--experiments", "image_flow", "--image-attribution", "1", "--n-masks", "40"]
    assert _run([*argv, "--object-masks", str(masks)]) == 0
    report = json.loads((out / "flow.json").read_text())
    assert list(report["experiments"]) == ["image_flow"]
    entry = report["image_attribution"]["img0.png"]
    assert np.asarray(entry["coef"]).shape == (4, 4)
    assert entry["object_mass"]["n_object"] == 4
    assert (out / "image_attribution_img0.png").stat().st_size > 1000


def test_missing_object_mask(tiny_paths, tmp_path, capsys):
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--out", str(tmp_path)]
    argv += ["--image-attribution", "1", "--object-masks", str(tmp_path)]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err == f"tl-lvlm flow: error: --object-masks: no mask for image random-0 in {tmp_path}\n"
    assert not (tmp_path / "flow.json").exists()


def test_n_images_is_a_deprecated_alias_of_n_samples(capsys):
    base = ["flow", "--model", "m", "--images", "random", "--out", "o"]
    assert build_parser().parse_args(base).n_samples == 8
    assert build_parser().parse_args([*base, "--n-samples", "3"]).n_samples == 3
    capsys.readouterr()
    assert build_parser().parse_args([*base, "--n-images", "5"]).n_samples == 5
    err = capsys.readouterr().err
    assert err == "tl-lvlm flow: warning: --n-images is deprecated; use --n-samples\n"
