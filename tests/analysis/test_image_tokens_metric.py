"""image_token_attribution(metric=...): the regressed values are the hook reference's metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_lvlm.ablation import image_kv_ablation_hooks, resolve_baseline
from tl_lvlm.analysis.image_tokens import NoImageEffectError, image_token_attribution
from tl_lvlm.testing import random_images

QUESTION = "What is the main object in this image?"


def independent(metric: str, logits: torch.Tensor, target: int, foil: int | None) -> np.ndarray:
    logits = logits.double()
    if metric == "logit_diff":
        return (logits[:, target] - logits[:, foil]).numpy()
    return torch.log_softmax(logits, -1)[:, target].numpy()


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_image_token_metric_matches_the_hook_reference(tiny_mha, metric):
    sample = tiny_mha.prepare(random_images(1, 28, seed=4), QUESTION)
    foil = 66 if metric == "logit_diff" else None
    result = image_token_attribution(
        tiny_mha, sample, baseline="zero", n_masks=20, metric=metric, foil=foil,
        min_logit_gap=-1e9, progress=False,
    )  # fmt: skip
    assert (result.metric, result.foil) == (metric, foil)
    # The reference: each position mask over every head of every layer, plus all ablated.
    n_layers, n_heads = tiny_mha.n_layers, tiny_mha.n_heads
    positions = torch.from_numpy(np.concatenate([result.masks, np.zeros_like(result.masks[:1])]))
    keep = positions[:, None, None].expand(-1, n_layers, n_heads, -1)
    rows = sample[[0] * len(keep)]
    baseline = resolve_baseline(tiny_mha, "zero", None, sample)
    with torch.no_grad():
        clean = independent(metric, tiny_mha.final_logits(sample), result.target, foil)[0]
        logits = tiny_mha.final_logits(
            rows, image_kv_ablation_hooks(tiny_mha, rows, baseline, keep)
        )
    values = independent(metric, logits, result.target, foil)
    ablated = values[-1]
    assert abs(result.clean_logit - clean) <= 1e-5 and abs(result.ablated_logit - ablated) <= 1e-4
    np.testing.assert_allclose(result.y, (values[:-1] - ablated) / (clean - ablated), atol=1e-4)
    assert np.ptp(result.y) > 0.05


def test_image_token_foil_errors(tiny_mha):
    sample = tiny_mha.prepare(random_images(1, 28, seed=4), QUESTION)
    run = dict(baseline="zero", n_masks=20, progress=False)
    with pytest.raises(ValueError, match="metric='logit_diff' needs a foil token"):
        image_token_attribution(tiny_mha, sample, metric="logit_diff", **run)
    with pytest.raises(ValueError, match="the foil is the target token 9"):
        image_token_attribution(tiny_mha, sample, metric="logit_diff", target=9, foil=9, **run)
    samples = [(image, QUESTION) for image in random_images(2, 28, seed=4)]
    with pytest.raises(ValueError, match="sample 1: metric='logit_diff' needs a foil"):
        image_token_attribution(tiny_mha, samples, metric="logit_diff", foil=[66, None], **run)
    with pytest.raises(NoImageEffectError, match="moves the target log-probability by only"):
        image_token_attribution(tiny_mha, sample, metric="logprob", min_logit_gap=1e6, **run)
