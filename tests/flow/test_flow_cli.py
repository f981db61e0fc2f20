"""``tl-lvlm flow``: sweeps and image-token maps from the command line, written to --out."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from tl_lvlm.flow import PAPER_EDGE_SETS
from tl_lvlm.flow_cli import add_flow_parser, flow_command
from tl_lvlm.testing import random_images


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tl-lvlm")
    add_flow_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    assert args.func is flow_command
    return args.func(args)


def test_builtin_random_images(tiny_paths, tmp_path):
    out = tmp_path / "out"
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--n-images", "3"]
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


def test_missing_object_mask(tiny_paths, tmp_path):
    argv = ["flow", "--model", tiny_paths["mha"], "--images", "random", "--out", str(tmp_path)]
    argv += ["--image-attribution", "1", "--object-masks", str(tmp_path)]
    with pytest.raises(SystemExit, match="no mask for image random-0"):
        _run(argv)
