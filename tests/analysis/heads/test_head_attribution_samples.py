"""Ways to pass samples, labels, targets and references; excluded samples are reported."""

from __future__ import annotations

import numpy as np
import pytest

from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.analysis.heads import HeadAttributionResult, head_attribution
from tl_lvlm.cli.report import summarize
from tl_lvlm.testing import random_images

pytest_plugins = ["planted_llava"]

QUESTION = "What is the main object in this image? Answer in a single word."
FAST = dict(n_masks=40, evaluate=False, progress=False)


def test_lvlm_inputs_batch_equals_tuples(planted_model, planted_samples):
    images = [image for image, _ in planted_samples[:2]]
    # Questions of different lengths: the batch is left-padded, the tuples are not.
    questions = ["What is the main object in this image? Answer in a single word.", "What?"]
    batch = planted_model.prepare(images, questions)
    assert (batch.attention_mask == 0).any()
    from_batch = head_attribution(planted_model, batch, **FAST)
    from_tuples = head_attribution(planted_model, list(zip(images, questions, strict=True)), **FAST)
    np.testing.assert_array_equal(from_batch.targets, from_tuples.targets)
    np.testing.assert_allclose(from_batch.y, from_tuples.y, atol=1e-4)
    np.testing.assert_allclose(from_batch.coef, from_tuples.coef, atol=1e-3)


def test_labels_and_exclusions_are_reported(planted_model, planted_samples, tmp_path):
    answers = head_attribution(planted_model, planted_samples, **FAST).answers
    # A token id, a wrong id, a word (decoded with its leading space) and no label.
    word = planted_model.tokenizer.decode([int(answers[2])])
    labels = [int(answers[0]), int(answers[1]) + 1, word, None]
    result = head_attribution(planted_model, planted_samples, labels=labels, **FAST)
    assert list(result.sample_ids) == [0, 2, 3]
    np.testing.assert_array_equal(result.labels, [answers[0], answers[2], -1])
    (wrong,) = result.excluded
    assert (wrong.sample_id, wrong.reason, wrong.answer) == (1, "wrong_answer", answers[1])
    assert wrong.label == answers[1] + 1
    assert "sample 1 (wrong_answer): the model answers" in wrong.describe()

    nothing = head_attribution(planted_model, planted_samples, min_logit_gap=1e6, **FAST)
    assert len(nothing.fits) == 0 and [e.reason for e in nothing.excluded] == ["small_gap"] * 4
    gap = nothing.excluded[0].clean_logit - nothing.excluded[0].ablated_logit
    assert f"is {gap:.4g}" in nothing.excluded[0].describe()
    with pytest.raises(ValueError, match="no sample was kept"):
        nothing.top_heads()
    loaded = HeadAttributionResult.load(nothing.save(tmp_path / "none.safetensors"))
    assert loaded.excluded == nothing.excluded
    summary = summarize(loaded)
    assert summary["n_kept"] == 0 and summary["n_excluded"] == 4 and "r2" not in summary


def test_explicit_target_and_reference(planted_model, planted_samples):
    default = head_attribution(planted_model, planted_samples[:2], **FAST)
    target = int(default.targets[0])
    # The same token for every sample, even where it is not the greedy answer.
    fixed = head_attribution(planted_model, planted_samples[:2], target=target, **FAST)
    assert [*fixed.targets, *(e.target for e in fixed.excluded)] == [target, target]
    # The mean baseline over another reference set is another baseline.
    other = head_attribution(
        planted_model, planted_samples[:2], reference=random_images(3, 28, seed=9), **FAST
    )
    assert other.config["baseline"] != default.config["baseline"]
    assert default.config["baseline"].startswith("mean:")
    assert not np.allclose(other.ablated_logit, default.ablated_logit)
    # A precomputed baseline is used as given.
    zero = head_attribution(planted_model, planted_samples[:2], baseline="zero", **FAST)
    inputs = planted_model.prepare([image for image, _ in planted_samples[:2]], QUESTION)
    given = image_kv_baseline(planted_model, inputs, kind="zero")
    custom = head_attribution(planted_model, planted_samples[:2], baseline=given, **FAST)
    assert custom.config["baseline"].startswith("custom:")
    np.testing.assert_array_equal(custom.y, zero.y)
