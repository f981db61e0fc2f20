"""Labels are one token as the model writes it, never cut silently (bundled tiny-digits)."""

from __future__ import annotations

import re

import pytest

from tl_lvlm import HookedLVLM
from tl_lvlm.analysis.heads import answer_token_id, head_attribution
from tl_lvlm.cli.image_sources import load_image_set
from tl_lvlm.zoo import DIGITS_QUESTION

NAME = "tl-lvlm/tiny-digits"


@pytest.fixture(scope="module")
def digits():
    return HookedLVLM.from_pretrained(NAME, device="cpu")


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
    with pytest.raises(ValueError, match="'four five' is 2 tokens"):
        head_attribution(digits, [(image, DIGITS_QUESTION, "four five")], n_masks=200)
