"""flow_sweep(metric=...): knocked and clean values are the metric of hooked forwards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep, knockout
from tl_lvlm.testing import random_images

QUESTIONS = ["What is the main object in this image?", "Which number is written here?"]
EDGES = PAPER_EDGE_SETS["image_flow"]


def independent(metric, logits: torch.Tensor, targets, foils) -> np.ndarray:
    logits = logits.double()
    rows = torch.arange(len(logits))
    if metric == "logit_diff":
        return (logits[rows, targets] - logits[rows, foils]).numpy()
    if metric == "logprob":
        return torch.log_softmax(logits, -1)[rows, targets].numpy()
    return (logits.max(-1).values - logits.mean(-1)).numpy()


@pytest.fixture(scope="module")
def samples(tiny_mha):
    return tiny_mha.prepare(random_images(2, 28, seed=5), QUESTIONS)


@pytest.mark.parametrize("metric", ["logit_diff", "logprob", "callable"])
def test_sweep_of_a_metric_matches_knockouts(tiny_mha, samples, metric):
    foils = [66, 176] if metric == "logit_diff" else None
    spec = (
        (lambda logits: logits.max(-1).values - logits.mean(-1)) if metric == "callable" else metric
    )
    sweep = flow_sweep(tiny_mha, samples, EDGES, 1, metric=spec, foil=foils, progress=False)
    with torch.no_grad():
        clean = tiny_mha(samples)[:, -1].float()
        targets = clean.argmax(-1)
        assert foils is None or not set(foils) & set(targets.tolist())
        np.testing.assert_allclose(
            sweep.clean, independent(metric, clean, targets, foils), atol=1e-5
        )
        for name, edges in EDGES.items():
            for i, start in enumerate(sweep.starts):
                with knockout(tiny_mha, samples, edges, start):
                    knocked = tiny_mha(samples)[:, -1].float()
                want = independent(metric, knocked, targets, foils)
                np.testing.assert_allclose(sweep.knocked[name][i], want, atol=1e-5)
    data = sweep.to_dict()
    assert data["foils"] == foils
    if metric == "logprob":
        # The relative value of a log-probability is the probability ratio; no sign exclusion.
        assert not sweep.excluded and data["normalization"] == "p(knocked) / p(clean)"
        ratio = np.exp(sweep.knocked["image read by no text"] - sweep.clean)
        np.testing.assert_allclose(sweep.normalized("image read by no text"), ratio)
    else:
        assert data["normalization"] == f"{sweep.metric}(knocked) / {sweep.metric}(clean)"
        kept = sweep.kept
        ratio = sweep.knocked["image read by no text"][:, kept] / sweep.clean[kept]
        np.testing.assert_allclose(sweep.normalized("image read by no text"), ratio)
    json.dumps(data)


def test_a_greedy_answer_equal_to_its_foil_is_excluded(tiny_mha, samples):
    with torch.no_grad():
        targets = tiny_mha(samples)[:, -1].argmax(-1).tolist()
    sweep = flow_sweep(
        tiny_mha, samples, EDGES, 1, metric="logit_diff", foil=[targets[0], 66], progress=False
    )
    assert list(sweep.excluded) == [0] and "the foil is the target" in sweep.excluded[0]
    with pytest.raises(ValueError, match="sample 1: metric='logit_diff' needs a foil"):
        flow_sweep(tiny_mha, samples, EDGES, 1, metric="logit_diff", foil=[66, None])
    with pytest.raises(ValueError, match="sample 0: the foil is the target token 5"):
        flow_sweep(tiny_mha, samples, EDGES, 1, targets=[5, None], metric="logit_diff", foil=5)
    with pytest.raises(ValueError, match="foil=5 is only used by metric='logit_diff'"):
        flow_sweep(tiny_mha, samples, EDGES, 1, foil=5)
