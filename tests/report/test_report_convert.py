"""Results as report data: every number checked against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from attribution import FitResult
from tl_lvlm.analysis.evaluation import Evaluation
from tl_lvlm.analysis.heads import HeadAttributionResult
from tl_lvlm.analysis.image_tokens import ImageAttribution
from tl_lvlm.families import PatchGeometry, TiledPatchGeometry
from tl_lvlm.flow import FlowSweep
from tl_lvlm.report.data import FigureContext, HeadMap
from tl_lvlm.report.from_results import (
    flow_report,
    head_context,
    head_report,
    image_map,
    run_settings,
)

N_LAYERS, N_HEADS = 3, 4


def fake_result(coefs: np.ndarray, sample_ids: list[int]) -> HeadAttributionResult:
    n = len(coefs)
    fits = [
        FitResult(c.ravel(), 0.0, 0.8 + 0.01 * i, 0.9 + 0.01 * i, 9, 1, np.zeros(1), np.zeros(1))
        for i, c in enumerate(coefs)
    ]
    ks = np.array([0, 1, 2, 3, 12])
    # head_attribution meets both thresholds at k = 2, random never.
    faith = {"head_attribution": [0, 0.5, 0.9, 1, 1], "random": [0, 0.1, 0.2, 0.3, 0.6]}
    comp = {"head_attribution": [1, 0.5, 0.1, 0, 0], "random": [1, 0.9, 0.8, 0.7, 0.4]}
    evaluation = Evaluation(
        ks=ks,
        faithfulness={k: np.tile(v, (n, 1)) for k, v in faith.items()},
        completeness={k: np.tile(v, (n, 1)) for k, v in comp.items()},
    )
    zeros = np.zeros(n)
    return HeadAttributionResult(
        sample_ids=np.array(sample_ids),
        fits=fits,
        answers=zeros.astype(int),
        labels=zeros.astype(int) - 1,
        targets=zeros.astype(int),
        clean_logit=zeros + 2,
        ablated_logit=zeros,
        n_masks_used=zeros.astype(int) + 10,
        y=np.zeros((n, 10)),
        masks=np.ones((10, N_LAYERS, N_HEADS), bool),
        excluded=[],
        scores={},
        evaluation=evaluation,
        config={
            "model": "/abs/tiny",
            "n_layers": N_LAYERS,
            "n_heads": N_HEADS,
            "n_masks": 10,
            "p_ablate": 0.75,
            "baseline": "mean:0123abcd",
            "seed": 3,
            "scope": "text",
            "method": "regression",
        },  # fmt: skip
    )


def test_head_report_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    coefs = rng.normal(size=(4, N_LAYERS, N_HEADS))
    coefs[:, 0, 0] = coefs[:, 2, 3] = 0.5  # a tie: index order decides, as in top_heads
    result = fake_result(coefs, [0, 2, 3, 5])
    context = head_context(result, "Which digit?", model="tl-lvlm/tiny-digits", reference="digits")
    assert context == FigureContext(
        "tl-lvlm/tiny-digits",
        "Which digit?",
        "10 masks, p_ablate 0.75, mean baseline over digits, seed 3",
        heads_needed=2,
    )
    names = [f"img{i}.png" for i in range(6)]
    heads, curves, fits = head_report(result, context, names)

    mean = coefs.mean(0)
    np.testing.assert_allclose(heads.mean, mean)
    np.testing.assert_allclose(heads.std, coefs.std(0))
    np.testing.assert_array_equal(heads.per_sample, coefs)
    cells = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
    ordered = sorted(cells, key=lambda c: (-mean[c], c))
    assert {c: int(heads.rank[c]) for c in cells} == {c: i + 1 for i, c in enumerate(ordered)}
    assert [(layer, head) for layer, head, _ in result.top_heads(3)] == ordered[:3]
    assert (
        heads.sample_names == fits.sample_names == ["img0.png", "img2.png", "img3.png", "img5.png"]
    )
    np.testing.assert_allclose(fits.r2, [0.8, 0.81, 0.82, 0.83])
    assert curves.heads_needed == {"head_attribution": 2, "random": None}
    np.testing.assert_allclose(curves.faithfulness["random"], [0, 0.1, 0.2, 0.3, 0.6])
    np.testing.assert_array_equal(curves.ks, [0, 1, 2, 3, 12])

    # Without names, samples are named by id; a result without evaluation has no curves.
    result.evaluation = None
    heads, curves, _ = head_report(result, context)
    assert curves is None and heads.sample_names[1] == "sample 2"
    assert head_context(result, "q").heads_needed is None
    with pytest.raises(ValueError, match="names has 3 entries but the result has sample id 5"):
        head_report(result, context, names[:3])


def test_run_settings_name_only_what_differs_from_the_paper():
    config = fake_result(np.zeros((1, N_LAYERS, N_HEADS)), [0]).config
    assert run_settings({**config, "baseline": "zero"}, "digits") == (
        "10 masks, p_ablate 0.75, zero baseline, seed 3"
    )
    assert run_settings({**config, "scope": "all", "method": "gradient"}).endswith(
        "mean baseline, seed 3, scope all, method gradient"
    )


def test_head_map_refuses_mismatched_shapes():
    context = FigureContext("m", "q", "s")
    ok = np.zeros((2, 3))
    with pytest.raises(ValueError, match="mean, std and rank must be one"):
        HeadMap(context, ok, ok, ok.ravel(), np.zeros((1, 2, 3)), ["a"])
    with pytest.raises(ValueError, match=r"expected \[n_samples=2 \(one per sample name\)"):
        HeadMap(context, ok, ok, ok, np.zeros((1, 2, 3)), ["a", "b"])


def test_flow_report_labels_windows_by_their_layers():
    knocked = {"a": np.array([[1.0, 2.0, 9.0], [0.5, 1.0, 9.0]]), "b": np.ones((2, 3))}
    sweep = FlowSweep(
        window=2,
        starts=[0, 1],
        targets=np.zeros(3, int),
        clean=np.array([2.0, 4.0, -1.0]),
        knocked=knocked,
        excluded={2: "clean target logit -1 <= 0"},
        edges={},
    )
    context = FigureContext("m", "q", "window of 2 layers")
    flow = flow_report(sweep, context, "image_flow")
    assert flow.windows == ["0-1", "1-2"] and flow.title == "image_flow"
    # Mean over the kept samples of knocked / clean.
    np.testing.assert_allclose(flow.curves["a"], [(1 / 2 + 2 / 4) / 2, (0.5 / 2 + 1 / 4) / 2])
    sweep.window, sweep.starts = 1, [4, 5]
    assert flow_report(sweep, context, "t").windows == ["4", "5"]


def _attribution(coef: np.ndarray, geometry) -> ImageAttribution:
    fit = FitResult(coef.ravel(), 0.0, 0.9, 0.9, 1, 1, np.zeros(1), np.zeros(1))
    masks = np.ones((2, coef.size), bool)
    return ImageAttribution(coef, fit, 0, 1.0, 0.0, masks, np.ones(2), geometry)


def test_image_map_cuts_the_image_to_the_region_the_map_covers():
    image = np.arange(28 * 56 * 3, dtype=np.uint32).reshape(28, 56, 3).astype(np.uint8)
    coef = np.arange(16.0).reshape(4, 4)
    mask = np.zeros((28, 56), bool)
    mask[:, 14:28] = True  # the left half of the central square: 2 of 4 patch columns
    context = FigureContext("m", "q", "s")
    centre = image_map(_attribution(coef, PatchGeometry(4, 4, "center")), image, context,
                       name="a.png", object_mask=mask)  # fmt: skip
    np.testing.assert_array_equal(centre.image, image[:, 14:42])
    positive = coef.clip(0)
    assert centre.object_share == pytest.approx(positive[:, :2].sum() / positive.sum())
    np.testing.assert_array_equal(centre.attribution, coef)
    # No geometry: the central square, as CLIP crops.
    np.testing.assert_array_equal(
        image_map(_attribution(coef, None), image, context, name="b").image, image[:, 14:42]
    )


def test_image_map_pads_a_tiled_grid_that_reaches_past_the_image():
    geometry = TiledPatchGeometry(
        2, 4, "stretch", tokens=(4, 5, 6, 7, 9, 10, 11, 12),
        base_rows=2, base_cols=2, base_tokens=(0, 1, 2, 3), extent=(-0.25, 0.0, 1.25, 1.0),
    )  # fmt: skip
    image = np.full((40, 80, 3), 7, np.uint8)
    out = image_map(_attribution(np.ones((2, 4)), geometry), image, FigureContext("m", "q", "s"),
                    name="tiled")  # fmt: skip
    assert out.image.shape == (60, 80, 3)
    assert (out.image[:10] == 255).all() and (out.image[50:] == 255).all()
    assert (out.image[10:50] == 7).all()
