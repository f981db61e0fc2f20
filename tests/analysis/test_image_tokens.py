"""Image-token attribution finds the patch a planted model copies its answer from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.analysis.image_tokens import (
    image_token_attribution,
    object_mass,
    patch_mask,
    plot_image_attribution,
)
from tl_lvlm.testing import TinyLlavaConfig, random_images, save_tiny_llava

QUESTION = "What is the main object in this image?"
PLANTED = 6  # image position read by the planted model: patch (row 1, col 2) of the 4x4 grid
TARGET = 42


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A one-layer tiny LLaVA whose answer is copied from image position PLANTED.

    Layer 0's queries are zero, so every query attends uniformly to what it can see.
    Head 0's values are rank one, ``v = a . ln1(x)``, with ``a`` solved so that it is 1
    at the planted image position and 0 at every other position of the prompt; the
    output projection writes that into a direction that only token TARGET reads, and
    the MLP is off. The answer's logit then depends on the planted position's value
    alone, which image-K/V ablation (zero baseline) removes.
    """
    path = save_tiny_llava(
        tmp_path_factory.mktemp("planted") / "model", TinyLlavaConfig(n_layers=1, n_heads=2)
    )
    model = HookedLVLM.from_pretrained(path, device="cpu")
    hf = model.hf_model
    sample = model.prepare(random_images(1, 28, seed=1), QUESTION)
    _, cache = model.run_with_cache(sample, names_filter="blocks.0.ln1.hook_out")
    normed = cache["blocks.0.ln1.hook_out"][0]  # [pos, d_model]
    onehot = torch.zeros(normed.shape[0], 1)
    onehot[sample.positions("image", 0)[PLANTED]] = 1.0
    a = torch.linalg.lstsq(normed, onehot, driver="gelsd").solution[:, 0]  # min-norm, exact
    layer = hf.model.language_model.layers[0]
    d_head = model.d_head
    direction = torch.randn(
        hf.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    direction /= direction.norm()
    with torch.no_grad():
        layer.self_attn.q_proj.weight.zero_()
        layer.self_attn.v_proj.weight.zero_()
        layer.self_attn.v_proj.weight[0] = a
        layer.self_attn.o_proj.weight.zero_()
        layer.self_attn.o_proj.weight[:, 0] = 100.0 * sample.seq_len * direction
        layer.mlp.down_proj.weight.zero_()
        hf.lm_head.weight[TARGET] = 10.0 * direction
    assert d_head > 1
    return model, sample


def test_planted_patch_ranks_first(planted):
    model, sample = planted
    assert int(model.answer(sample)[0][0]) == TARGET
    result = image_token_attribution(
        model, sample, baseline="zero", n_masks=300, batch_size=100, progress=False
    )
    assert result.coef.shape == (4, 4) and result.target == TARGET
    assert np.unravel_index(np.argmax(result.coef), result.coef.shape) == (1, 2)
    order = np.argsort(-result.coef.ravel())
    assert order[0] == PLANTED
    assert result.coef.ravel()[PLANTED] > 0.9
    assert np.abs(np.delete(result.coef.ravel(), PLANTED)).max() < 0.05
    assert result.fit.r2 > 0.99


def test_takes_the_sample_forms_of_head_attribution(planted):
    """``[(image, question, label), ...]`` as for head attribution: one map per sample, each
    equal to the one-prompt call on the same prepared row."""
    model, sample = planted
    images = random_images(2, 28, seed=1)
    settings = dict(baseline="zero", n_masks=60, batch_size=30, progress=False)
    results = image_token_attribution(
        model, [(images[0], QUESTION, TARGET), (images[1], QUESTION)], **settings
    )
    assert isinstance(results, list) and len(results) == 2
    for image, got in zip(images, results, strict=True):
        want = image_token_attribution(model, model.prepare(image, QUESTION), **settings)
        np.testing.assert_allclose(got.coef, want.coef, atol=1e-9)
        assert got.target == want.target
    wrong = (images[0], QUESTION, TARGET + 1)
    with pytest.raises(ValueError, match="sample 0 is labelled 43 but the model answers"):
        image_token_attribution(model, [wrong], **settings)


def test_too_few_masks_for_the_image_positions_are_refused(planted):
    model, sample = planted
    with pytest.raises(ValueError, match=r"at least 16 image positions \+ 1 = 17"):
        image_token_attribution(model, sample, baseline="zero", n_masks=16, progress=False)


def test_mean_baseline_needs_a_reference(planted):
    model, sample = planted
    with pytest.raises(ValueError, match="needs reference images"):
        image_token_attribution(model, sample, n_masks=20)


def test_image_independent_answer_is_refused(planted):
    model, sample = planted
    # A gap the image cannot explain: the normalized logit would be meaningless.
    with pytest.raises(ValueError, match="does not depend on the image"):
        image_token_attribution(model, sample, baseline="zero", n_masks=20, min_logit_gap=1e6)


def test_patch_mask_and_object_mass():
    coef = np.zeros((4, 4))
    coef[1, 2] = 3.0  # object
    coef[3, 3] = 1.0  # background
    coef[0, 0] = -2.0  # negative: left out of the positive mass
    mask = np.zeros((40, 56), dtype=bool)  # wider than tall: central 40x40 square is used
    mask[10:20, 28:38] = True  # rows 1, columns 2 of a 10-pixel patch grid after the crop
    np.testing.assert_array_equal(np.argwhere(patch_mask(mask, 4)), [[1, 2]])
    mass = object_mass(coef, mask)
    assert mass.object_share == pytest.approx(0.75)
    assert mass.object_area == pytest.approx(1 / 16)
    assert mass.mean_object == pytest.approx(3.0)
    assert mass.mean_background == pytest.approx(-1.0 / 15)
    assert (mass.n_object, mass.n_background) == (1, 15)
    with pytest.raises(ValueError, match="covers no patch"):
        object_mass(coef, np.zeros((40, 40)))
    with pytest.raises(ValueError, match="2-D"):
        object_mass(coef, np.zeros((40, 40, 3)))


def test_overlay_figure(tmp_path):
    coef = np.random.default_rng(0).normal(size=(4, 4))
    mask = np.zeros((28, 28))
    mask[7:14, 14:21] = 1
    path = tmp_path / "overlay.png"
    plot_image_attribution(coef, random_images(1, 28)[0], path, object_mask=mask)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
