"""Bad input to the head attribution driver fails early, naming the problem and the fix."""

from __future__ import annotations

import re

import numpy as np
import pytest

from attribution import save_results
from tl_lvlm.analysis.heads import HeadAttributionResult, answer_token_id, head_attribution
from tl_lvlm.testing import random_images

QUESTION = "What digit is shown? Answer in a single word."


@pytest.fixture(scope="module")
def samples():
    return [(image, QUESTION) for image in random_images(2, 28, seed=0)]


@pytest.mark.parametrize("p_ablate", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_p_ablate_outside_open_unit_interval(tiny_mha, samples, p_ablate):
    with pytest.raises(ValueError, match=r"p_ablate must be in \(0, 1\)"):
        head_attribution(tiny_mha, samples, n_masks=50, p_ablate=p_ablate)


def test_too_few_masks_for_the_heads(tiny_mha, samples):
    # 2 layers x 4 heads: the regression needs at least 9 masks.
    with pytest.raises(ValueError, match=r"n_masks must be at least .* = 9"):
        head_attribution(tiny_mha, samples, n_masks=8)
    with pytest.raises(ValueError, match="lower holdout or raise n_masks"):
        head_attribution(tiny_mha, samples, n_masks=9)
    with pytest.raises(ValueError, match="n_masks must be"):
        head_attribution(tiny_mha, samples, n_masks=50.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"baseline": "median"},
            r"baseline must be one of \('mean', 'zero'\) or an ImageKVBaseline",
        ),
        ({"compare_with": ["attention", "random"]}, r"unknown rankings \['attention'\]"),
        ({"scope": "image"}, "unknown scope 'image'"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"min_logit_gap": -1.0}, "min_logit_gap must be >= 0"),
        ({"ks": [0, 9]}, r"ks must be .* in \[0, 8\]"),
        ({"shard": 2, "n_shards": 2}, "invalid shard 2 of 2"),
        ({"shard": 0}, "pass both shard and n_shards"),
        ({"labels": ["one"]}, "labels has 1 entries for 2 samples"),
        ({"target": [5, 6, 7]}, "target has 3 entries for 2 samples"),
        ({"target": 10**6}, "outside the vocabulary"),
        ({"reference": []}, "reference is empty"),
    ],
)
def test_bad_arguments(tiny_mha, samples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        head_attribution(tiny_mha, samples, n_masks=50, progress=False, **kwargs)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("an image", TypeError, "samples must be a list of"),
        (random_images(2, 28), TypeError, r"samples\[0\] must be \(image, question\)"),
        ([(None, QUESTION, "one", "extra")], TypeError, "of length 4"),
        ([(None, 3)], TypeError, "with a str question"),
        ([], ValueError, "samples is empty"),
    ],
)
def test_bad_samples(tiny_mha, bad, error, match):
    with pytest.raises(error, match=match):
        head_attribution(tiny_mha, bad, n_masks=50)


def test_bad_labels(tiny_mha, samples):
    labelled = [(image, q, "one") for image, q in samples]
    with pytest.raises(ValueError, match="labels given both in the sample tuples and as labels="):
        head_attribution(tiny_mha, labelled, labels=["one", "two"], n_masks=50)
    with pytest.raises(TypeError, match="must be a token id .* or a non-empty word"):
        head_attribution(tiny_mha, samples, labels=[1.5, None], n_masks=50)
    with pytest.raises(TypeError, match="one entry per sample"):
        head_attribution(tiny_mha, samples, labels="one", n_masks=50)


def test_answer_token_id(tiny_mha):
    tok = tiny_mha.tokenizer
    # The answer follows "ASSISTANT:" after a space: " object", not "object".
    (word,) = tok(" object", add_special_tokens=False)["input_ids"]
    assert tok("object", add_special_tokens=False)["input_ids"][0] != word
    assert answer_token_id(tiny_mha, "object") == word
    assert answer_token_id(tiny_mha, " object") == word
    assert answer_token_id(tiny_mha, word) == word
    # A word of several tokens is refused, listing them, never cut to its first token.
    pieces = [tok.decode([t]) for t in tok(" one two", add_special_tokens=False)["input_ids"]]
    assert len(pieces) > 1
    with pytest.raises(ValueError, match=re.escape(f"'one two' is {len(pieces)} tokens {pieces}")):
        answer_token_id(tiny_mha, "one two")
    with pytest.raises(TypeError):
        answer_token_id(tiny_mha, "  ")
    with pytest.raises(TypeError):
        answer_token_id(tiny_mha, True)


def test_results_file_of_another_kind(tmp_path):
    path = save_results(tmp_path / "other.safetensors", [0], {"x": np.zeros(1)}, {"kind": "x"})
    with pytest.raises(ValueError, match="not a head attribution results file"):
        HeadAttributionResult.load(path)


def test_the_old_baselines_name_of_compare_with_warns_and_works(tiny_mha, samples):
    with pytest.warns(DeprecationWarning, match=r"now compare_with"):
        with pytest.raises(ValueError, match=r"unknown rankings \['attention'\]"):
            head_attribution(tiny_mha, samples, n_masks=50, baselines=["attention"])


def test_an_unknown_setting_is_a_type_error_naming_it(tiny_mha, samples):
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['n_mask'\]"):
        head_attribution(tiny_mha, samples, n_mask=50)
