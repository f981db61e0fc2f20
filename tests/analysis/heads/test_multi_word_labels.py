"""Multi-word labels (COCO's ``"traffic light"``, ``"hot dog"``) on the bundled model's real
byte-level BPE tokenizer: attributed through the first token of the answer as the tokenizer
writes it after the prompt, and checked whole against the model's generated answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tl_lvlm import head_attribution, zoo
from tl_lvlm.analysis.heads import answer_token_id, answers_label, label_tokens
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.cli.coco import select_coco
from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep
from tl_lvlm.inputs.templates import split_template
from tl_lvlm.zoo.digits import load_digit_images

Q = zoo.DIGITS_QUESTION


@pytest.fixture(scope="module")
def seven():
    images, values = load_digit_images(split="test", style="original")
    return images[list(values).index(7)]


def test_first_token_is_the_answer_as_the_tokenizer_writes_it(digits_model):
    tokenizer = digits_model.tokenizer
    # The whole prompt as text (its image placeholder left as written), then the answer.
    prompt = digits_model.template.replace("{question}", Q)
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for name, first in (("traffic light", " t"), ("hot dog", " h")):
        full = tokenizer(f"{prompt} {name}", add_special_tokens=False)["input_ids"]
        assert full[: len(base)] == base
        tokens = label_tokens(digits_model, name)
        assert list(tokens) == full[len(base) :]
        assert tokenizer.decode(tokens) == f" {name}"
        assert tokenizer.decode(tokens[:1]) == first  # this small BPE splits " traffic"
    # A target is not checked against the answer, so it stays one token.
    context = split_template(digits_model.template)[2]
    with pytest.raises(
        ValueError, match=f"label/target 'traffic light' is 9 tokens .* after {context!r}"
    ):
        answer_token_id(digits_model, "traffic light")
    assert label_tokens(digits_model, "seven") == (answer_token_id(digits_model, "seven"),)


def test_the_whole_name_must_be_the_models_answer(digits_model, seven):
    inputs = digits_model.prepare(seven, Q)
    written = digits_model.generate(inputs, 2, return_type="tokens")[0].tolist()
    seven_id = answer_token_id(digits_model, "seven")
    assert written[0] == seven_id and written[1] != seven_id  # ' seven', then the end
    assert answers_label(digits_model, inputs, written)
    assert not answers_label(digits_model, inputs, label_tokens(digits_model, "seven seven"))

    samples = [(seven, Q, "seven"), (seven, Q, "seven seven")]
    result = head_attribution(digits_model, samples, baseline="zero", n_masks=120,
                              evaluate=False, progress=False)  # fmt: skip
    assert result.sample_ids.tolist() == [0]
    (excluded,) = result.excluded
    # Its first token is the model's answer: only the whole name tells it apart.
    assert (excluded.sample_id, excluded.reason) == (1, "wrong_answer")
    assert excluded.answer == excluded.label == seven_id

    sweep = flow_sweep(digits_model, samples, PAPER_EDGE_SETS["text_flow"], 12, progress=False)
    assert sweep.excluded == {1: "wrong answer: writes ' seven', not 'seven seven'"}
    with pytest.raises(ValueError, match="sample 0 is labelled 'seven seven' but the model "
                       "answers ' seven'"):  # fmt: skip
        image_token_attribution(digits_model, samples[1:], baseline="zero", n_masks=48)


def test_coco_names_stay_whole(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.png")
    square = [[0, 0, 8, 0, 8, 8, 0, 8]]
    data = {
        "images": [{"id": i, "file_name": f, "width": 10, "height": 10}
                   for i, f in ((1, "a.png"), (2, "b.png"))],
        "annotations": [{"id": i, "image_id": i, "category_id": i, "area": 64, "iscrowd": 0,
                         "segmentation": square, "bbox": [0, 0, 8, 8]} for i in (1, 2)],
        "categories": [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "tv"}],
    }  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(data))
    selection = select_coco(tmp_path / "instances.json", tmp_path)
    assert selection.labels == {"a.png": "traffic light", "b.png": "television"}
    assert np.asarray(selection.masks["a.png"]).sum() > 0
