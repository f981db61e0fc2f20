"""Labels are one token as the model writes it, never cut silently (bundled tiny-digits).

Multi-word labels (COCO's ``"traffic light"``, ``"hot dog"``), on the bundled model's real
byte-level BPE tokenizer, are the exception: attributed through the first token of the answer
as the tokenizer writes it after the prompt, and checked whole against the model's generated
answer.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from tl_lvlm import HookedLVLM, zoo
from tl_lvlm.analysis.heads import answer_token_id, answers_label, head_attribution, label_tokens
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.cli.coco import select_coco
from tl_lvlm.cli.image_sources import load_image_set
from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep
from tl_lvlm.inputs.templates import split_template
from tl_lvlm.zoo import DIGITS_QUESTION
from tl_lvlm.zoo.digits import load_digit_images


@pytest.fixture(scope="module")
def digits(digits_model) -> HookedLVLM:
    return digits_model


def generated_ids(model, text: str) -> list[int]:
    """Ids of ``text`` right after the prompt, as the tokenizer writes the whole answer."""
    prompt = model.template.split("{question}")[1]
    base = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = model.tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
    assert full[: len(base)] == base
    return full[len(base) :]


def test_word_is_the_token_the_model_writes(digits):
    (five,) = generated_ids(digits, " five")
    assert digits.tokenizer.decode([five]) == " five"
    # The leading space comes from the tokenizer's own word tokens, with or without it given.
    assert answer_token_id(digits, "five") == five
    assert answer_token_id(digits, " five") == five
    assert answer_token_id(digits, five) == five


def test_several_tokens_are_refused_listing_them(digits):
    with pytest.raises(ValueError, match=re.escape("'four five' is 2 tokens [' four', ' five']")):
        answer_token_id(digits, "four five")


def test_other_case_is_refused_with_a_single_token_suggestion(digits):
    (five,) = generated_ids(digits, " five")
    pieces = [digits.tokenizer.decode([t]) for t in generated_ids(digits, " Five")]
    assert len(pieces) > 1  # the vocabulary lower-cases: " Five" is not one of its words
    with pytest.raises(
        ValueError,
        match=re.escape(f"'Five' is {len(pieces)} tokens {pieces}")
        + ".*"
        + re.escape(f"did you mean 'five' (token {five}, ' five')?"),
    ):
        answer_token_id(digits, "Five")


def test_bad_label_in_a_sample_is_refused(digits):
    (image,) = load_image_set("digits", n=1).images
    with pytest.raises(ValueError, match="'fourr' is 2 tokens"):
        head_attribution(digits, [(image, DIGITS_QUESTION, "fourr")], n_masks=200)


Q = zoo.DIGITS_QUESTION


@pytest.fixture(scope="module")
def seven():
    images, values = load_digit_images(split="test", style="original")
    return images[list(values).index(7)]


def test_first_token_is_the_answer_as_the_tokenizer_writes_it(digits):
    tokenizer = digits.tokenizer
    # The whole prompt as text (its image placeholder left as written), then the answer.
    prompt = digits.template.replace("{question}", Q)
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for name, first in (("traffic light", " t"), ("hot dog", " h")):
        full = tokenizer(f"{prompt} {name}", add_special_tokens=False)["input_ids"]
        assert full[: len(base)] == base
        tokens = label_tokens(digits, name)
        assert list(tokens) == full[len(base) :]
        assert tokenizer.decode(tokens) == f" {name}"
        assert tokenizer.decode(tokens[:1]) == first  # this small BPE splits " traffic"
    # A target is not checked against the answer, so it stays one token.
    context = split_template(digits.template)[2]
    with pytest.raises(
        ValueError, match=f"label/target 'traffic light' is 9 tokens .* after {context!r}"
    ):
        answer_token_id(digits, "traffic light")
    assert label_tokens(digits, "seven") == (answer_token_id(digits, "seven"),)


def test_the_whole_name_must_be_the_models_answer(digits, seven):
    inputs = digits.prepare(seven, Q)
    written = digits.generate(inputs, 2, return_type="tokens")[0].tolist()
    seven_id = answer_token_id(digits, "seven")
    assert written[0] == seven_id and written[1] != seven_id  # ' seven', then the end
    assert answers_label(digits, inputs, written)
    assert not answers_label(digits, inputs, label_tokens(digits, "seven seven"))

    samples = [(seven, Q, "seven"), (seven, Q, "seven seven")]
    result = head_attribution(digits, samples, baseline="zero", n_masks=120,
                              evaluate=False, progress=False)  # fmt: skip
    assert result.sample_ids.tolist() == [0]
    (excluded,) = result.excluded
    # Its first token is the model's answer: only the whole name tells it apart.
    assert (excluded.sample_id, excluded.reason) == (1, "wrong_answer")
    assert excluded.answer == excluded.label == seven_id

    sweep = flow_sweep(digits, samples, PAPER_EDGE_SETS["text_flow"], 12, progress=False)
    assert sweep.excluded == {1: "wrong answer: writes ' seven', not 'seven seven'"}
    with pytest.raises(ValueError, match="sample 0 is labelled 'seven seven' but the model "
                       "answers ' seven'"):  # fmt: skip
        image_token_attribution(digits, samples[1:], baseline="zero", n_masks=48)


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
