"""head_attribution(method="gradient"): mean gate gradients recover the planted circuit."""

from __future__ import annotations

import numpy as np
import pytest

from attribution import rank_by, sample_masks
from tl_lvlm.analysis.heads import HeadAttributionResult, head_attribution
from tl_lvlm.testing import random_images

pytest_plugins = ["planted_llava"]  # the planted model and its fixtures

QUESTION = "What digit is shown? Answer in a single word."


@pytest.fixture(scope="module")
def gradient_result(planted_model, planted_samples):
    return head_attribution(
        planted_model, planted_samples, method="gradient", n_gradient_masks=64, progress=False
    )


def test_gradient_ranks_the_planted_heads_first(gradient_result, planted_heads):
    result = gradient_result
    k = len(planted_heads)
    assert result.excluded == [] and len(result.fits) == 4
    for coef in result.coef:
        assert set(rank_by(coef)[:k]) == planted_heads
    assert {layer * result.n_heads + head for layer, head, _ in result.top_heads(k)} == (
        planted_heads
    )
    flat = result.coef.reshape(len(result.fits), -1)
    others = sorted(set(range(flat.shape[1])) - planted_heads)
    # Heads with no output have exactly no effect, so their gradient is 0 (no noise here).
    assert np.abs(flat[:, others]).max() < 1e-4
    assert flat[:, sorted(planted_heads)].min() > 0.2
    needed = result.heads_needed()
    assert needed["head_attribution"] == k


def test_gradient_result_records_its_masks_and_passes(gradient_result, planted_model):
    result = gradient_result
    n = planted_model.n_layers * planted_model.n_heads
    config = result.config
    assert (config["method"], config["n_masks"], config["holdout"]) == ("gradient", 64, 0.0)
    assert config["passes_per_mask"] == 2
    # The regression's first masks for the same seed and p_ablate.
    want = sample_masks(64, n, config["p_ablate"], config["seed"]).reshape(result.masks.shape)
    np.testing.assert_array_equal(result.masks, want)
    np.testing.assert_array_equal(result.n_masks_used, [64] * 4)
    np.testing.assert_array_equal(result.passes_used, [2 * 64 + 1] * 4)
    assert result.y.shape == (4, 64) and np.isfinite(result.y).all()
    for i, fit in enumerate(result.fits):
        assert (fit.n_train, fit.n_test) == (64, 0)
        # r2 / pearson: the gradients' linear model on the masks' own forward values.
        pred = fit.predict(result.masks.reshape(64, -1))
        residual = result.y[i] - pred
        assert abs(residual.mean()) < 1e-9  # only the intercept is fitted
        ss = ((result.y[i] - result.y[i].mean()) ** 2).sum()
        np.testing.assert_allclose(fit.r2, 1 - (residual**2).sum() / ss, rtol=1e-9)
        np.testing.assert_allclose(fit.pearson, np.corrcoef(pred, result.y[i])[0, 1], rtol=1e-9)


def test_gradient_result_round_trips(gradient_result, tmp_path):
    path = gradient_result.save(tmp_path / "gradient.safetensors")
    loaded = HeadAttributionResult.load(path)
    np.testing.assert_array_equal(loaded.coef, gradient_result.coef)
    np.testing.assert_array_equal(loaded.passes_used, gradient_result.passes_used)
    np.testing.assert_array_equal(loaded.masks, gradient_result.masks)
    assert loaded.heads_needed() == gradient_result.heads_needed()


def test_regression_records_its_passes(tiny_mha):
    samples = [(image, QUESTION) for image in random_images(1, 28, seed=0)]
    result = head_attribution(
        tiny_mha, samples, n_masks=40, baseline="zero", evaluate=False, progress=False
    )
    assert (result.config["method"], result.config["passes_per_mask"]) == ("regression", 1)
    np.testing.assert_array_equal(result.passes_used, result.n_masks_used + 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="ridge"), r"unknown method 'ridge'; choose from \('regression', 'gradient'\)"),
        (dict(method="gradient", n_gradient_masks=0), "n_gradient_masks must be a positive"),
        (dict(method="gradient", scope="all"), "method='gradient' differentiates the engine's"),
        (dict(method="gradient", store_dir="x"), "method='gradient' stores nothing to resume"),
    ],
)
def test_gradient_refuses_what_it_cannot_do(tiny_mha, tmp_path, kwargs, match):
    samples = [(image, QUESTION) for image in random_images(1, 28, seed=0)]
    if "store_dir" in kwargs:
        kwargs["store_dir"] = tmp_path / "store"
    with pytest.raises(ValueError, match=match):
        head_attribution(tiny_mha, samples, n_masks=40, progress=False, **kwargs)
    assert not (tmp_path / "store").exists()


def test_gradient_refuses_a_family_without_the_engine(tiny_mha, monkeypatch):
    monkeypatch.setattr(type(tiny_mha.family), "refused_analyses", {"engine": "no engine here"})
    samples = [(image, QUESTION) for image in random_images(1, 28, seed=0)]
    with pytest.raises(NotImplementedError, match="method='gradient' needs the ablation engine"):
        head_attribution(tiny_mha, samples, method="gradient", progress=False)
