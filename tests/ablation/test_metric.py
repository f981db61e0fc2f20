"""metric= of the engine: each metric against the hook reference, its gradients, its errors.

The reference runs whole hooked forwards (:func:`~tl_lvlm.ablation.image_kv_ablation_hooks`)
and computes each metric here, in fp64, from the full fp32 final-position logits.
"""

from __future__ import annotations

import pytest
import torch
from test_engine_gradients import interpolated_logits, random_masks

from tl_lvlm.ablation import image_kv_ablation_hooks
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.metric import METRICS, Metric
from tl_lvlm.ablation.normalization import LogitNormalization


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """A user's metric: how far the best token leads the second best."""
    top = logits.topk(2, -1).values
    return top[:, 0] - top[:, 1]


def independent(metric, logits: torch.Tensor, target: int, foil: int | None) -> torch.Tensor:
    """The metric of full fp32 logits ``[batch, vocab]``, written out in fp64."""
    logits = logits.double()
    if metric == "logit_diff":
        return logits[:, target] - logits[:, foil]
    if metric == "logprob":
        return torch.log_softmax(logits, -1)[:, target]
    return top2_margin(logits)


def reference_logits(model, sample, baseline, masks, scope="text") -> torch.Tensor:
    rows = sample[[0] * masks.shape[0]]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks, scope=scope)
    with torch.no_grad():
        return model.final_logits(rows, hooks)


def foil_of(engine: AblationEngine) -> int:
    """The clean run's second most likely token: a foil the masks move against the target."""
    return int(engine.clean_logits.topk(2).indices[1])


@pytest.mark.parametrize("metric", ["logit_diff", "logprob", top2_margin])
def test_engine_metric_matches_hook_reference(tiny_model, make_setup, metric):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    plain = AblationEngine(tiny_model, sample, s.baseline)
    target, foil = plain.target, foil_of(plain) if metric == "logit_diff" else None
    engine = AblationEngine(tiny_model, sample, s.baseline, metric=metric, foil=foil)
    name = metric if isinstance(metric, str) else "top2"
    masks = random_masks(tiny_model, 30, seed=0)
    got = engine.run(masks, batch_size=8).double()
    want = independent(name, reference_logits(tiny_model, sample, s.baseline, masks), target, foil)
    assert got.shape == (32,) and (got - want).abs().max() <= 1e-4
    assert got.std() > 1e-2  # the masks move the metric
    with torch.no_grad():
        clean = independent(name, tiny_model.final_logits(sample), target, foil)
    assert abs(engine.clean_value - float(clean[0])) <= 1e-5
    norm = engine.normalization
    assert norm.clean == engine.clean_value and norm.ablated == pytest.approx(
        float(got[-1]), abs=1e-5
    )
    # Full logits on request, and the same values from them.
    values, logits = engine.run(masks[:5], return_logits=True)
    assert (values.double() - independent(name, logits, target, foil)).abs().max() <= 1e-5
    # Per-position masks (image-token attribution's) and scope "all".
    g = torch.Generator().manual_seed(1)
    shape = (6, tiny_model.n_layers, tiny_model.n_heads, s.baseline.n_image)
    per_position = torch.rand(shape, generator=g) >= 0.5
    want = independent(
        name, reference_logits(tiny_model, sample, s.baseline, per_position), target, foil
    )
    assert (engine.run(per_position).double() - want).abs().max() <= 1e-4
    everywhere = AblationEngine(
        tiny_model, sample, s.baseline, metric=metric, foil=foil, scope="all"
    )
    want = reference_logits(tiny_model, sample, s.baseline, masks[:6], scope="all")
    got = everywhere.run(masks[:6]).double()
    assert (got - independent(name, want, target, foil)).abs().max() <= 1e-4


@pytest.mark.parametrize("metric", ["logit_diff", "logprob"])
def test_metric_gradients_match_finite_differences(tiny_gqa, make_setup, metric):
    """d y / d gates of the metric, against central differences of the interpolated
    hook reference's metric."""
    s = make_setup(tiny_gqa)
    sample = s.inputs[0]
    plain = AblationEngine(tiny_gqa, sample, s.baseline)
    foil = foil_of(plain) if metric == "logit_diff" else None
    engine = AblationEngine(tiny_gqa, sample, s.baseline, metric=metric, foil=foil)
    n_layers, n_heads = tiny_gqa.n_layers, tiny_gqa.n_heads
    n = n_layers * n_heads
    point = 0.2 + 0.6 * torch.rand(1, n_layers, n_heads, generator=torch.Generator().manual_seed(2))

    def measured(gates: torch.Tensor) -> torch.Tensor:
        logits = interpolated_logits(tiny_gqa, sample, s.baseline, gates)
        return independent(metric, logits, engine.target, foil)

    clean, ablated = measured(torch.stack([torch.ones_like(point[0]), point[0] * 0])).tolist()
    norm = LogitNormalization(clean, ablated)
    y, grad = engine.gate_gradients(point, normalization=norm)
    h = 0.02
    eye = torch.eye(n).reshape(n, n_layers, n_heads)
    out = measured(torch.cat([point + h * eye, point - h * eye]))
    fd = ((out[:n] - out[n:]) / (2 * h) / norm.gap).reshape(1, n_layers, n_heads)
    assert abs(float(y[0]) - float(norm(measured(point))[0])) <= 1e-4
    assert fd.abs().max() > 0.05
    assert (grad.double() - fd).abs().max() <= 2e-3 * max(1.0, float(fd.abs().max()))


def test_metric_errors_name_the_fix(tiny_gqa, make_setup):
    s = make_setup(tiny_gqa)
    sample = s.inputs[0]
    with pytest.raises(ValueError, match=r"unknown metric 'prob'; choose from \('logit', "):
        Metric.resolve("prob")
    with pytest.raises(TypeError, match="metric must be one of .* or a callable"):
        Metric.resolve(3)
    assert Metric.resolve(top2_margin).name == "test_metric.top2_margin"
    assert [Metric.resolve(m).name for m in METRICS] == list(METRICS)
    with pytest.raises(ValueError, match="metric='logit_diff' needs a foil token"):
        AblationEngine(tiny_gqa, sample, s.baseline, metric="logit_diff")
    with pytest.raises(ValueError, match="foil=3 is only used by metric='logit_diff'"):
        AblationEngine(tiny_gqa, sample, s.baseline, foil=3)
    target = AblationEngine(tiny_gqa, sample, s.baseline).target
    with pytest.raises(ValueError, match=f"the foil is the target token {target}"):
        AblationEngine(tiny_gqa, sample, s.baseline, metric="logit_diff", foil=target)
    with pytest.raises(ValueError, match=r"must map logits \[batch, vocab\] = \[1, \d+\] to"):
        AblationEngine(tiny_gqa, sample, s.baseline, metric=lambda logits: logits[:, :2])
    with pytest.raises(TypeError, match="must return a float tensor .* got torch.int64"):
        AblationEngine(tiny_gqa, sample, s.baseline, metric=lambda logits: logits.argmax(-1))
    flat = AblationEngine(tiny_gqa, sample, s.baseline, metric=lambda x: x.argmax(-1).float())
    with pytest.raises(ValueError, match="is not differentiable in the logits"):
        flat.gate_gradients(torch.ones(1, tiny_gqa.n_layers, tiny_gqa.n_heads))
