"""AblationEngine.gate_gradients against an independent interpolated hook reference.

The reference runs whole hooked forwards (no shared prefix, no engine code): the hook
reference's score / z edits of :mod:`tl_lvlm.ablation`, weighted here by ``1 - g``
instead of switched, so that a head with gate ``g`` sees ``g * clean + (1 - g) *
baseline`` keys and values at the image positions. Its finite differences are the
gradients the engine must return.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tl_lvlm._utils.tensors import gather_positions
from tl_lvlm.ablation import ablated_queries, image_kv_ablation_hooks
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.ablation.hooks import _LayerAblation
from tl_lvlm.ablation.normalization import LogitNormalization


class _InterpolatedLayer(_LayerAblation):
    """The hook reference with a float ``swap`` = ``1 - g`` where a query sees the image.

    Scores: ``q . (g K_clean + (1 - g) K_base) = clean + (1 - g) (base - clean)``; values:
    the inherited ``z += (pattern[image] * swap) @ (V_base - V_clean)`` is already linear
    in ``swap``.
    """

    def edit_scores(self, scores, hook):
        edited = scores[:, :, self.first :]
        cols = self._image_columns(edited)
        q = self.seen["q"][:, self.first :].transpose(1, 2)
        cos, sin = (
            gather_positions(self.seen[n].expand(q.shape[0], -1, -1), self.image, dim=1)
            for n in ("cos", "sin")
        )
        k_rot = self.rotate(self.k_base[None].expand(q.shape[0], -1, -1, -1), cos, sin)
        k_rot = k_rot.repeat_interleave(q.shape[1] // k_rot.shape[1], dim=1)
        base = torch.matmul(q, k_rot.transpose(-1, -2)) * self.scaling
        clean = edited.gather(-1, cols)
        edited = edited.scatter(-1, cols, clean + self.swap * (base - clean))
        return scores.slice_scatter(edited, dim=2, start=self.first)


def interpolated_logits(model, sample, baseline, gates) -> torch.Tensor:
    """Final-position fp32 logits of whole hooked forwards, one row per gate vector."""
    rows = sample[[0] * gates.shape[0]]
    first, affected = ablated_queries(model, rows, "text")
    hooks = []
    for layer in range(model.n_layers):
        state = _InterpolatedLayer(
            layer=layer,
            image=rows.image,
            first=first,
            swap=(1 - gates[:, layer])[:, :, None, None] * affected[:, None],
            k_base=baseline.k[layer],
            v_base=baseline.v[layer],
            scaling=model.family.attention_scaling(layer),
            rotate=functools.partial(model.family.rotate_keys, layer),
        )
        hooks += state.hooks()
    with torch.no_grad():
        return model.final_logits(rows, hooks)


def bool_reference(model, sample, baseline, masks) -> torch.Tensor:
    rows = sample[[0] * masks.shape[0]]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks)
    with torch.no_grad():
        return model.final_logits(rows, hooks)


def random_masks(model, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, model.n_layers, model.n_heads, generator=g) >= 0.75
    kept = torch.ones(1, model.n_layers, model.n_heads, dtype=torch.bool)
    return torch.cat([masks, kept, ~kept])


def test_boolean_gates_give_the_engines_logits(tiny_model, make_setup):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    engine = AblationEngine(tiny_model, sample, s.baseline)
    masks = random_masks(tiny_model, 20, seed=0)
    norm = engine.normalization
    y, grad = engine.gate_gradients(masks.float(), batch_size=7)
    assert y.shape == (22,) and grad.shape == (22, tiny_model.n_layers, tiny_model.n_heads)
    assert y.dtype == grad.dtype == torch.float32
    logits = y.double() * norm.gap + norm.ablated
    assert (logits - engine.run(masks).double()).abs().max() <= 1e-5
    want = bool_reference(tiny_model, sample, s.baseline, masks)[:, engine.target]
    assert (logits - want.double()).abs().max() <= 1e-4
    assert abs(float(y[-2]) - 1) <= 1e-5 and abs(float(y[-1])) <= 1e-5
    # The backward pass leaves the model's parameters without gradients.
    assert all(p.grad is None for p in tiny_model.hf_model.parameters())
    # Bool gates are accepted as such and mean the same.
    assert torch.equal(engine.gate_gradients(masks, batch_size=7)[0], y)


def test_interpolated_reference_is_the_hook_reference_at_boolean_gates(tiny_gqa, make_setup):
    """The test's reference reduces to the library's hook reference (so it is the same edit)."""
    s = make_setup(tiny_gqa)
    masks = random_masks(tiny_gqa, 6, seed=1)
    got = interpolated_logits(tiny_gqa, s.inputs[0], s.baseline, masks.float())
    want = bool_reference(tiny_gqa, s.inputs[0], s.baseline, masks)
    assert (got - want).abs().max() <= 1e-5


def test_gradients_match_finite_differences(tiny_model, make_setup):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    engine = AblationEngine(tiny_model, sample, s.baseline)
    n_layers, n_heads = tiny_model.n_layers, tiny_model.n_heads
    g = torch.Generator().manual_seed(2)
    points = torch.stack(
        [
            0.2 + 0.6 * torch.rand(n_layers, n_heads, generator=g),  # inside the cube
            (torch.rand(n_layers, n_heads, generator=g) >= 0.5).float(),  # a binary mask
        ]
    )
    clean, ablated = interpolated_logits(
        tiny_model, sample, s.baseline, torch.stack([torch.ones_like(points[0]), points[0] * 0])
    )[:, engine.target].tolist()
    norm = LogitNormalization(clean, ablated)
    y, grad = engine.gate_gradients(points, normalization=norm)

    # Central differences at steps h and h/2, Richardson-extrapolated (error O(h^4)).
    h, n = 0.04, n_layers * n_heads
    eye = torch.eye(n).reshape(n, n_layers, n_heads)
    shifted = torch.cat(
        [p + sign * step * eye for p in points for step in (h, h / 2) for sign in (1, -1)]
    )
    out = interpolated_logits(tiny_model, sample, s.baseline, shifted)[:, engine.target]
    out = torch.as_tensor(norm(out.numpy())).reshape(len(points), 2, 2, n)
    central = (out[:, :, 0] - out[:, :, 1]) / torch.tensor([2 * h, h])[None, :, None]
    fd = ((4 * central[:, 1] - central[:, 0]) / 3).reshape(-1, n_layers, n_heads)

    want_y = norm(interpolated_logits(tiny_model, sample, s.baseline, points)[:, engine.target])
    assert (y.double() - torch.as_tensor(want_y)).abs().max() <= 1e-4
    assert fd.abs().max() > 0.05  # the gates do move the answer
    assert (grad.double() - fd).abs().max() <= 1e-3 * max(1.0, float(fd.abs().max()))


def test_gate_gradients_refuse_bad_input(tiny_gqa, make_setup):
    s = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, s.inputs[0], s.baseline)
    shape = (1, tiny_gqa.n_layers, tiny_gqa.n_heads)
    with pytest.raises(ValueError, match=r"gates must lie in \[0, 1\]"):
        engine.gate_gradients(torch.full(shape, 1.5))
    with pytest.raises(ValueError, match="per-image-position gates are not supported"):
        engine.gate_gradients(torch.ones(*shape, s.baseline.n_image))
    with pytest.raises(TypeError, match="gates must be a float"):
        engine.gate_gradients(torch.ones(shape, dtype=torch.int64))
    everywhere = AblationEngine(tiny_gqa, s.inputs[0], s.baseline, scope="all")
    with pytest.raises(ValueError, match="gate gradients need scope='text'"):
        everywhere.gate_gradients(torch.ones(shape))
