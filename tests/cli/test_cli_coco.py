"""COCO in: the digits COCO fixture through the selection rule, ``attribute`` and ``flow``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from tl_lvlm import zoo
from tl_lvlm.cli import main
from tl_lvlm.cli.coco import SelectionRule, select_coco
from tl_lvlm.testing.coco import write_digit_coco

DIGITS = "tl-lvlm/tiny-digits"


@pytest.fixture(scope="module")
def digit_coco(tmp_path_factory):
    return write_digit_coco(tmp_path_factory.mktemp("coco"))


def test_fixture_has_every_segmentation_form(digit_coco):
    anns = json.loads(digit_coco.annotations.read_text())["annotations"]
    forms = {
        "polygon" if isinstance(a["segmentation"], list)
        else "rle" if isinstance(a["segmentation"]["counts"], list)
        else "compressed rle"
        for a in anns
    }  # fmt: skip
    assert forms == {"polygon", "rle", "compressed rle"}


def test_selection_keeps_single_objects_and_says_why_the_rest_are_out(digit_coco):
    selection = select_coco(digit_coco.annotations, digit_coco.images)
    assert selection.labels == digit_coco.single  # distractors and all
    excluded = dict(selection.excluded)
    assert set(excluded) == set(digit_coco.multi)
    for name in digit_coco.multi:
        reason = excluded[name]
        if name.startswith("multi"):
            assert reason.startswith("2 objects: another instance is ") and reason.endswith(
                "of the main object's area > max_other_ratio 0.3"
            ), reason
        else:
            assert "of the image < min_main_share 0.05" in reason, reason


def test_masks_are_the_main_instance_as_pycocotools_decodes_it(digit_coco):
    selection = select_coco(digit_coco.annotations, digit_coco.images)
    coco = COCO(str(digit_coco.annotations))
    for image in coco.dataset["images"]:
        name = image["file_name"]
        if name not in selection.masks:
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        main_ann = max(anns, key=lambda a: a["area"])
        want = coco.annToMask(main_ann).astype(bool)
        np.testing.assert_array_equal(selection.masks[name], want, err_msg=name)
        assert want.sum() == pytest.approx(main_ann["area"])


def test_rule_is_configurable(digit_coco):
    strict = SelectionRule(min_main_share=0.5)
    with pytest.raises(ValueError, match="lower --coco-min-share or raise --coco-max-other"):
        select_coco(digit_coco.annotations, digit_coco.images, strict)
    loose = select_coco(
        digit_coco.annotations, digit_coco.images, SelectionRule(max_other_ratio=1.0)
    )
    assert {f.name for f in loose.files} == {*digit_coco.single, "multi-0.png", "multi-1.png"}
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        SelectionRule(max_other_ratio=2)


def test_attribute_and_flow_on_coco_write_selection_json(digit_coco, tmp_path, capsys):
    common = ["--model", DIGITS, "--images", str(digit_coco.images), "--coco-annotations",
              str(digit_coco.annotations), "--question", zoo.DIGITS_QUESTION,
              "--baseline", "zero", "--quiet", "--threads", "1"]  # fmt: skip
    runs = {
        "attribute": ["--n-masks", "120", "--no-evaluate"],
        "flow": ["--experiments", "text_flow", "--image-attribution", "6", "--n-masks", "60"],
    }
    for command, extra in runs.items():
        out = tmp_path / command
        assert main([command, *common, "--out", str(out), *extra]) == 0, capsys.readouterr().err
        selection = json.loads((out / "selection.json").read_text())
        assert selection["kept"] == [
            {"image": name, "label": label} for name, label in sorted(digit_coco.single.items())
        ]
        assert {e["image"] for e in selection["excluded"]} == set(digit_coco.multi)
        assert all(e["reason"] for e in selection["excluded"])
    record = json.loads((tmp_path / "attribute" / "samples.json").read_text())
    assert record["labels"] == [digit_coco.single[n] for n in record["names"]]
    flow = json.loads((tmp_path / "flow" / "flow.json").read_text())
    attributed = [e for e in flow["image_attribution"].values() if "excluded" not in e]
    assert attributed, flow["image_attribution"]  # object vs background from the COCO masks
    assert all("object_mass" in e for e in attributed)
