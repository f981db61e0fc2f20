"""flow_sweep: knockout windows over the layers, the paper's edge sets, figure and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tl_lvlm.flow import PAPER_EDGE_SETS, FlowSweep, flow_sweep, knockout, plot_flow_sweep
from tl_lvlm.testing import random_images

QUESTIONS = ["What is the main object in this image?", "Which number is written here?"]


@pytest.fixture(scope="module")
def samples(tiny_mha):
    return tiny_mha.prepare(random_images(3, 28, seed=5), QUESTIONS + QUESTIONS[:1])


@pytest.fixture(scope="module")
def sweep(tiny_mha, samples):
    return flow_sweep(tiny_mha, samples, PAPER_EDGE_SETS["image_flow"], 1, batch_size=2)


def test_sweep_matches_single_knockouts(tiny_mha, samples, sweep):
    assert sweep.starts == [0, 1] and sweep.window == 1
    with torch.no_grad():
        logits = tiny_mha(samples)[:, -1]
        targets = logits.argmax(-1)
        np.testing.assert_allclose(sweep.clean, logits.max(-1).values.double(), atol=1e-5)
        for name, edges in PAPER_EDGE_SETS["image_flow"].items():
            for i, start in enumerate(sweep.starts):
                with knockout(tiny_mha, samples, edges, start):
                    knocked = tiny_mha(samples)[:, -1]
                want = knocked.gather(-1, targets[:, None])[:, 0].double()
                np.testing.assert_allclose(sweep.knocked[name][i], want, atol=1e-5)
    assert sweep.targets.tolist() == targets.tolist()


def test_curves_are_logit_ratios(sweep):
    assert not sweep.excluded
    curves = sweep.curves()
    assert set(curves) == set(PAPER_EDGE_SETS["image_flow"])
    for name, curve in curves.items():
        assert curve.shape == (2,)
        np.testing.assert_allclose(curve, (sweep.knocked[name] / sweep.clean).mean(1))


def test_text_flow_and_default_window(tiny_mha, samples):
    sweep = flow_sweep(tiny_mha, samples[:1], PAPER_EDGE_SETS["text_flow"], progress=False)
    assert sweep.window == 1  # max(1, n_layers // 8) for 2 layers
    assert all(np.isfinite(c).all() for c in sweep.curves().values())
    full = flow_sweep(tiny_mha, samples[:1], PAPER_EDGE_SETS["text_flow"], 2, progress=False)
    assert full.starts == [0]


def test_bad_window(tiny_mha, samples):
    with pytest.raises(ValueError, match="window must be an int in 1..2"):
        flow_sweep(tiny_mha, samples, PAPER_EDGE_SETS["text_flow"], 3)


def test_wrong_answers_are_excluded(tiny_mha, samples, sweep):
    targets = sweep.targets.copy()
    targets[1] = (targets[1] + 1) % 50
    given = flow_sweep(
        tiny_mha, samples, PAPER_EDGE_SETS["image_flow"], 1, targets=targets, progress=False
    )
    assert list(given.excluded) == [1] and "wrong answer" in given.excluded[1]
    assert given.kept.tolist() == [0, 2]
    assert given.normalized("image read by no text").shape == (2, 2)


def test_a_none_target_is_the_greedy_answer(tiny_mha, samples, sweep):
    # As a partly labelled folder gives them: sample 1's target is its own answer.
    targets = [int(sweep.targets[0]), None, int(sweep.targets[2])]
    partly = flow_sweep(
        tiny_mha, samples, PAPER_EDGE_SETS["image_flow"], 1, targets=targets, batch_size=2,
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(partly.targets, sweep.targets)
    np.testing.assert_allclose(partly.clean, sweep.clean, rtol=1e-6)
    for name in sweep.knocked:
        np.testing.assert_allclose(partly.knocked[name], sweep.knocked[name], rtol=1e-6)
    assert partly.excluded == sweep.excluded


def test_figure_and_json(sweep, tmp_path):
    png = tmp_path / "sweep.png"
    plot_flow_sweep(sweep, png, title="image flow")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    path = tmp_path / "sweep.json"
    sweep.save_json(path)
    data = json.loads(path.read_text())
    assert data["normalization"] == "logit(knocked) / logit(clean)"
    assert data["edges"]["image read by no text"] == [[["image"], ["question", "role", "final"]]]
    assert np.allclose(
        data["curves"]["image read by question only"], sweep.curves()["image read by question only"]
    )
    # Read back, it is the same sweep (the study caches its sweeps this way).
    back = FlowSweep.from_dict(data)
    assert (back.window, back.starts, back.excluded, back.edges) == (
        sweep.window, sweep.starts, sweep.excluded, sweep.edges
    )  # fmt: skip
    np.testing.assert_array_equal(back.targets, sweep.targets)
    np.testing.assert_array_equal(back.clean, sweep.clean)
    for name in sweep.knocked:
        np.testing.assert_array_equal(back.knocked[name], sweep.knocked[name])
