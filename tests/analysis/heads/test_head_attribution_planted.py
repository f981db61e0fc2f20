"""Head attribution recovers a planted circuit: exactly the heads that can read the image."""

from __future__ import annotations

import numpy as np
import pytest

from attribution import rank_by
from tl_lvlm.analysis.heads import head_attribution

pytest_plugins = ["planted_llava"]  # the planted model and its fixtures


@pytest.fixture(scope="module")
def planted_result(planted_model, planted_samples):
    """Head attribution of the planted model with every baseline evaluated."""
    return head_attribution(planted_model, planted_samples, n_masks=300, progress=False)


def test_planted_heads_ranked_first_with_high_r2(planted_result, planted_heads):
    result = planted_result
    k = len(planted_heads)
    assert result.excluded == [] and len(result.fits) == 4
    for coef in result.coef:
        assert set(rank_by(coef)[:k]) == planted_heads
    assert set(rank_by(result.mean)[:k]) == planted_heads
    top = {layer * result.n_heads + head for layer, head, _ in result.top_heads(k)}
    assert top == planted_heads
    flat = result.coef.reshape(len(result.fits), -1)
    others = sorted(set(range(flat.shape[1])) - planted_heads)
    # Heads without output have no effect at all: only regression noise remains.
    assert np.abs(flat[:, others]).max() < 0.05
    assert flat[:, sorted(planted_heads)].min() > 0.2
    assert (result.r2 > 0.9).all() and (result.pearson > 0.95).all()


def test_normalized_logit_definition(planted_result):
    result = planted_result
    masks = result.masks.reshape(len(result.masks), -1)
    assert (result.clean_logit - result.ablated_logit > 0.5).all()
    for i, fit in enumerate(result.fits):
        assert (fit.n_train, fit.n_test) == (270, 30)
        assert np.corrcoef(fit.predict(masks), result.y[i])[0, 1] > 0.95
    # y is 0 with every head ablated and 1 with every head kept (the curves' end points).
    ev = result.evaluation
    np.testing.assert_allclose(ev.faithfulness["random"][:, [0, -1]], [[0, 1]] * 4, atol=1e-4)


def test_evaluation_head_attribution_needs_fewest_heads(planted_result, planted_heads):
    ev = planted_result.evaluation
    needed = planted_result.heads_needed()
    assert list(needed) == [
        "head_attribution", "attention_final", "attention_text", "single_head", "random"
    ]  # fmt: skip
    assert needed["head_attribution"] == len(planted_heads)
    assert all(k is None or k >= len(planted_heads) for k in needed.values())
    n = planted_result.n_layers * planted_result.n_heads
    assert list(ev.ks) == list(range(n + 1))
    f, c = ev.mean_faithfulness(), ev.mean_completeness()
    for name in ev.rankings:
        assert ev.faithfulness[name].shape == ev.completeness[name].shape == (4, n + 1)
        np.testing.assert_allclose([f[name][0], f[name][-1]], [0, 1], atol=1e-4)
        np.testing.assert_allclose([c[name][0], c[name][-1]], [1, 0], atol=1e-4)
    # Keeping only the planted heads restores the answer; ablating them removes it.
    k = len(planted_heads)
    assert f["head_attribution"][k] > 0.95 and abs(c["head_attribution"][k]) < 0.05


def test_baseline_scores(planted_result, planted_heads):
    scores = planted_result.scores
    assert set(scores) == {"attention_final", "attention_text", "single_head"}
    for name in ("attention_final", "attention_text"):
        # The attention of a query on the image keys is a fraction of its attention.
        assert scores[name].shape == (4, 2, 4)
        assert ((scores[name] >= 0) & (scores[name] <= 1)).all()
    single = scores["single_head"].reshape(4, -1)
    others = sorted(set(range(8)) - planted_heads)
    np.testing.assert_allclose(single[:, others], 0, atol=1e-5)
    assert (single[:, sorted(planted_heads)] > 0).all()
