"""head_attribution(metric=...): both methods regress the metric the hook reference measures.

The reference runs whole hooked forwards (:func:`~tl_lvlm.ablation.image_kv_ablation_hooks`)
and computes the metric here, in fp64, from the full fp32 final-position logits; the clean
value, the all-ablated value, ``y`` and the faithfulness curve must all be of that metric.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution import rank_by
from tl_lvlm.ablation import image_kv_ablation_hooks, resolve_baseline
from tl_lvlm.analysis.heads import HeadAttributionResult, answer_token_id, head_attribution
from tl_lvlm.testing import random_images

QUESTION = "What is the main object in this image?"
SETTINGS = dict(baseline="zero", n_masks=24, compare_with=("random",), progress=False)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """A user's metric: how far the best token stands above the mean logit."""
    return logits.max(-1).values - logits.mean(-1)


def independent(metric, logits, target: int, foil: int | None) -> np.ndarray:
    logits = logits.double()
    if metric == "logit_diff":
        values = logits[:, target] - logits[:, foil]
    elif metric == "logprob":
        values = torch.log_softmax(logits, -1)[:, target]
    else:
        values = confidence(logits)
    return values.numpy()


def reference(model, inputs, masks, metric, target, foil) -> tuple[float, float, np.ndarray]:
    """Clean, all-ablated and masked metric values of the hook reference (zero baseline)."""
    baseline = resolve_baseline(model, "zero", None, inputs)
    all_masks = torch.cat([torch.from_numpy(masks), torch.zeros(1, *masks.shape[1:], dtype=bool)])
    rows = inputs[[0] * len(all_masks)]
    with torch.no_grad():
        clean = model.final_logits(inputs)
        logits = model.final_logits(rows, image_kv_ablation_hooks(model, rows, baseline, all_masks))
    values = independent(metric, logits, target, foil)
    return float(independent(metric, clean, target, foil)[0]), float(values[-1]), values[:-1]


@pytest.fixture(scope="module")
def samples():
    return [(image, QUESTION) for image in random_images(2, 28, seed=3)]


@pytest.fixture(scope="module")
def foils(tiny_mha, samples):
    """Each sample's foil: the token that ablating every head raises most (not its answer)."""
    inputs = tiny_mha.prepare([s[0] for s in samples], QUESTION)
    baseline = resolve_baseline(tiny_mha, "zero", None, inputs)
    ablate = torch.zeros(2, tiny_mha.n_layers, tiny_mha.n_heads, dtype=torch.bool)
    with torch.no_grad():
        clean = tiny_mha.final_logits(inputs)
        ablated = tiny_mha.final_logits(
            inputs, image_kv_ablation_hooks(tiny_mha, inputs, baseline, ablate)
        )
    rise = (ablated - clean).scatter(-1, clean.argmax(-1, keepdim=True), -torch.inf)
    return rise.argmax(-1).tolist()


@pytest.mark.parametrize(
    "metric, method",
    [("logit_diff", "regression"), ("logprob", "regression"), (confidence, "regression"),
     ("logprob", "gradient"), ("logit_diff", "gradient")],
)  # fmt: skip
def test_attribution_of_a_metric_matches_the_hook_reference(
    tiny_mha, samples, foils, metric, method
):
    foil = foils if metric == "logit_diff" else None
    kwargs = dict(method=method, n_gradient_masks=12, min_logit_gap=0.0)
    result = head_attribution(tiny_mha, samples, metric=metric, foil=foil, **SETTINGS, **kwargs)
    name = metric if isinstance(metric, str) else "confidence"
    assert result.excluded == [] and len(result.fits) == 2
    recorded = "test_head_attribution_metric.confidence" if name == "confidence" else metric
    assert result.config["metric"] == recorded and result.config["foils"] == foil
    masks = result.masks.reshape(len(result.masks), -1)
    for i, (image, question) in enumerate(samples):
        inputs = tiny_mha.prepare([image], [question])
        target = int(result.targets[i])
        clean, ablated, values = reference(
            tiny_mha, inputs, result.masks, name, target, None if foil is None else foil[i]
        )
        assert abs(result.clean_logit[i] - clean) <= 1e-5
        assert abs(result.ablated_logit[i] - ablated) <= 1e-4
        np.testing.assert_allclose(result.y[i], (values - ablated) / (clean - ablated), atol=1e-4)
        assert np.ptp(result.y[i]) > 0.05  # the masks move the metric
        # The faithfulness curve measures the same metric: top-k heads kept.
        ks = result.evaluation.ks
        j = len(ks) // 2
        keep = np.zeros((1, masks.shape[1]), dtype=bool)
        keep[0, rank_by(result.fits[i].coef)[: ks[j]]] = True
        *_, kept = reference(
            tiny_mha, inputs, keep.reshape(1, *result.masks.shape[1:]), name, target,
            None if foil is None else foil[i],
        )  # fmt: skip
        got = result.evaluation.faithfulness["head_attribution"][i, j]
        assert abs(got - (kept[0] - ablated) / (clean - ablated)) <= 1e-4


def test_foils_are_tokenised_like_targets(tiny_mha, samples):
    foil = answer_token_id(tiny_mha, "the")
    settings = dict(SETTINGS, evaluate=False, min_logit_gap=0.0)
    result = head_attribution(tiny_mha, samples[:1], metric="logit_diff", foil="the", **settings)
    assert result.config["foils"] == [foil] and foil not in result.targets


def test_a_store_of_another_metric_is_refused(tiny_mha, samples, tmp_path):
    store = tmp_path / "store"
    settings = dict(SETTINGS, evaluate=False, min_logit_gap=0.0)
    head_attribution(tiny_mha, samples[:1], store_dir=store, **settings)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in store.rglob("*"))
    with pytest.raises(ValueError, match="metric: stored 'logit', now 'logprob'"):
        head_attribution(tiny_mha, samples[:1], store_dir=store, metric="logprob", **settings)
    with pytest.raises(ValueError, match="now 'test_head_attribution_metric.confidence'"):
        head_attribution(tiny_mha, samples[:1], store_dir=store, metric=confidence, **settings)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in store.rglob("*")) == before


def test_foil_errors_name_the_sample_and_the_fix(tiny_mha, samples, foils):
    run = dict(SETTINGS, evaluate=False)
    with pytest.raises(ValueError, match="metric='logit_diff' needs a foil token"):
        head_attribution(tiny_mha, samples, metric="logit_diff", **run)
    with pytest.raises(ValueError, match="sample 1: metric='logit_diff' needs a foil"):
        head_attribution(tiny_mha, samples, metric="logit_diff", foil=[foils[0], None], **run)
    with pytest.raises(ValueError, match="foil=5 is only used by metric='logit_diff'"):
        head_attribution(tiny_mha, samples, foil=5, **run)
    with pytest.raises(ValueError, match="sample 0: the foil is the target token 7"):
        head_attribution(tiny_mha, samples, metric="logit_diff", target=7, foil=[7, 8], **run)
    with pytest.raises(ValueError, match="unknown metric 'diff'; choose from"):
        head_attribution(tiny_mha, samples, metric="diff", **run)


def test_a_greedy_answer_equal_to_its_foil_is_excluded(tiny_mha, samples, foils, tmp_path):
    inputs = tiny_mha.prepare([s[0] for s in samples], QUESTION)
    answer = int(tiny_mha.answer(inputs)[0][0])
    settings = dict(SETTINGS, evaluate=False, min_logit_gap=0.0)
    result = head_attribution(
        tiny_mha, samples, metric="logit_diff", foil=[answer, foils[1]], **settings
    )
    assert result.sample_ids.tolist() == [1]
    (excluded,) = result.excluded
    assert (excluded.sample_id, excluded.reason, excluded.answer) == (0, "foil_is_target", answer)
    assert "which is the sample's foil, so target - foil is 0" in excluded.describe()
    loaded = HeadAttributionResult.load(result.save(tmp_path / "r.safetensors"))
    assert loaded.excluded[0].reason == "foil_is_target"
