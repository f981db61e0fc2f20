"""The questions of tiny-digits: the required phrasings, one-token answers, held-out phrasings."""

from __future__ import annotations

import pytest

from tl_lvlm.zoo import DIGITS_QUESTION
from tl_lvlm.zoo.questions import (
    ANSWER_WORDS,
    BACKGROUND_QUESTION,
    INK_QUESTION,
    OBJECT_QUESTION,
    PARITY_QUESTION,
    TASKS,
    answer_token_ids,
    prompt,
    task,
)
from tl_lvlm.zoo.tiny_llava import build_tokenizer
from tl_lvlm.zoo.train_digits import default_model_config


@pytest.fixture(scope="module")
def tokenizer():
    cfg = default_model_config()
    return build_tokenizer(cfg.bpe_vocab_size, cfg.corpus)


def test_required_phrasings_and_answers():
    assert OBJECT_QUESTION == "What is the main object in this image? Answer in a single word."
    assert INK_QUESTION == "What color is the digit? Answer in a single word."
    assert BACKGROUND_QUESTION == "What color is the background? Answer in a single word."
    assert PARITY_QUESTION == "Is the number even or odd? Answer in a single word."
    assert DIGITS_QUESTION == OBJECT_QUESTION
    # a red 7 on blue
    answers = {name: t.answer(7, "red", "blue") for name, t in TASKS.items()}
    assert answers == {"object": "seven", "ink": "red", "background": "blue", "parity": "odd"}
    assert TASKS["parity"].answer(0, "black", "white") == "even"
    for t in TASKS.values():
        assert t.question == t.train_phrasings[0]
        assert t.answer(3, "green", "yellow") in t.answers


def test_phrasings_are_distinct_and_some_held_out():
    every = [q for t in TASKS.values() for q in t.phrasings]
    assert len(every) == len(set(every))
    for t in TASKS.values():
        assert len(t.train_phrasings) >= 3 and len(t.held_out_phrasings) >= 2
        assert not set(t.train_phrasings) & set(t.held_out_phrasings)


def test_every_answer_is_one_distinct_token(tokenizer):
    ids = answer_token_ids(tokenizer, ANSWER_WORDS)
    assert len(set(ids)) == len(ANSWER_WORDS) == 18
    assert [tokenizer.decode([i]) for i in ids] == [" " + w for w in ANSWER_WORDS]
    with pytest.raises(ValueError, match="not a single token"):
        answer_token_ids(tokenizer, ["hippopotamus"])


def test_held_out_phrasings_use_only_trained_tokens(tokenizer):
    """A held-out phrasing is a new combination of trained tokens, not untrained embeddings."""
    seen = {
        i
        for t in TASKS.values()
        for q in t.train_phrasings
        for i in tokenizer(prompt(q))["input_ids"]
    }
    for t in TASKS.values():
        for q in t.held_out_phrasings:
            assert set(tokenizer(prompt(q))["input_ids"]) <= seen, q


def test_prompt_and_unknown_task():
    assert prompt("Q?") == "USER: <image>\nQ? ASSISTANT:"
    assert task("ink") is TASKS["ink"]
    with pytest.raises(ValueError, match="unknown task 'size'"):
        task("size")
