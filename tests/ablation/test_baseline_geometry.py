"""Baselines on mixed image sizes: zeros fit any geometry, the mean is one per geometry.

Checked on the tiny Qwen2.5-VL (dynamic resolution: the number of image tokens follows
the image size) against an independent computation: the per-geometry mean equals
:func:`image_kv_baseline` over the reference images resized by hand, and the engine
equals the hook reference with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tl_lvlm.ablation import AblationEngine, image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.baseline import GeometryMeanBaseline, ImageKVBaseline, resolve_baseline

sys.path.insert(0, str(Path(__file__).parents[1] / "families"))
from tiny_families import family_model, sized_images  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:the mean baseline is computed over only")

QUESTION = "What is it?"
#: (height, width): square, landscape, portrait; the tiny Qwen2.5-VL gives each its own grid.
SHAPES = [(28, 28), (28, 56), (56, 28)]


@pytest.fixture(scope="module")
def qwen():
    return family_model("qwen2_5_vl")


@pytest.fixture(scope="module")
def mixed(qwen):
    return qwen.prepare(sized_images(*SHAPES, seed=3), QUESTION)


def spans(model, inputs):
    from tl_lvlm.ablation.baseline import unpadded_image_span

    return [unpadded_image_span(inputs, r) for r in range(inputs.batch_size)]


def test_the_rows_have_different_geometries(qwen, mixed):
    # Landscape and portrait have as many tokens, on transposed grids: a span alone cannot
    # tell them apart, which is why the means are keyed by image size.
    assert spans(qwen, mixed)[1] == spans(qwen, mixed)[2] != spans(qwen, mixed)[0]
    grids = [qwen.family.patch_geometry(qwen.processor, mixed[r]) for r in (1, 2)]
    assert (grids[0].rows, grids[0].cols) == (grids[1].cols, grids[1].rows)
    assert grids[0].rows != grids[0].cols


def test_zero_baseline_fits_every_row(qwen, mixed):
    zero = resolve_baseline(qwen, "zero", None, mixed)
    for row in range(mixed.batch_size):
        fitted = zero.for_inputs(qwen, mixed[row])
        assert fitted.image_span == spans(qwen, mixed[row])[0]
        assert not fitted.k.any() and not fitted.v.any()
        AblationEngine(qwen, mixed[row], zero)  # refused before: "built for image span ..."


def test_mean_is_per_geometry_and_equals_the_reference_resized_by_hand(qwen, mixed):
    reference = sized_images((40, 40), (20, 60), (60, 30), (33, 47), seed=4)
    means = resolve_baseline(qwen, "mean", reference, mixed)
    assert isinstance(means, GeometryMeanBaseline)
    for row, (h, w) in enumerate(SHAPES):
        got = means.for_inputs(qwen, mixed[row])
        resized = [image.resize((w, h), Image.BICUBIC) for image in reference]
        want = image_kv_baseline(qwen, qwen.prepare(resized, QUESTION))
        torch.testing.assert_close(got.k, want.k, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.v, want.v, rtol=0, atol=1e-6)
        assert got.n_samples == len(reference)
    assert len(means._cache) == means.max_cached == 2  # the last two sizes
    again = means.for_inputs(qwen, mixed[2])
    assert again is means.for_inputs(qwen, mixed[2])  # cached, not rebuilt
    rebuilt = means.for_inputs(qwen, mixed[0])  # dropped, rebuilt the same
    want = image_kv_baseline(
        qwen, qwen.prepare([im.resize((28, 28), Image.BICUBIC) for im in reference], QUESTION)
    )
    torch.testing.assert_close(rebuilt.k, want.k, rtol=0, atol=1e-6)


def test_default_mean_is_over_the_samples_own_images(qwen, mixed):
    means = resolve_baseline(qwen, "mean", None, mixed)
    assert [image.size for image in means.reference] == [(w, h) for h, w in SHAPES]


def test_engine_equals_the_hook_reference_with_a_per_geometry_mean(qwen, mixed):
    means = resolve_baseline(qwen, "mean", None, mixed)
    sample = mixed[2]
    engine = AblationEngine(qwen, sample, means)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, qwen.n_layers, qwen.n_heads, generator=g) > 0.5
    masks[0] = False  # all ablated
    got = engine.run(masks, batch_size=4)
    rows = sample[[0] * len(masks)]
    hooks = image_kv_ablation_hooks(qwen, rows, means, masks)
    with torch.no_grad():
        want = qwen.final_logits(rows, hooks)[:, engine.target]
    assert (got - want).abs().max() <= 1e-4
    assert (want - engine.clean_logit).abs().max() > 1e-4  # the ablation does something


def test_a_batch_of_several_geometries_is_refused_with_the_fix(qwen, mixed):
    means = resolve_baseline(qwen, "mean", None, mixed)
    keep = torch.ones(mixed.batch_size, qwen.n_layers, qwen.n_heads, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"run them one row at a time \(inputs\[i\]\)"):
        image_kv_ablation_hooks(qwen, mixed, means, keep)


def test_fixed_resolution_family_keeps_one_mean():
    llava = family_model("llava")
    inputs = llava.prepare(sized_images(*SHAPES, seed=3), QUESTION)
    with pytest.warns(UserWarning, match="only 3 images"):
        mean = resolve_baseline(llava, "mean", None, inputs)
    assert isinstance(mean, ImageKVBaseline)
    assert mean.for_inputs(llava, inputs) is mean
