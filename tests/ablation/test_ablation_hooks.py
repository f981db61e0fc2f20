"""The hook reference for image-K/V head ablation (tl_lvlm.ablation)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tl_lvlm.ablation import (
    image_kv_ablation,
    image_kv_ablation_hooks,
    image_kv_baseline,
)
from tl_lvlm.inputs.templates import VICUNA_SYSTEM_TEMPLATE
from tl_lvlm.testing import random_images


def keep_all(model, batch: int = 2) -> torch.Tensor:
    return torch.ones(batch, model.n_layers, model.n_heads, dtype=torch.bool)


def run(model, inputs, baseline, keep, scope="text") -> torch.Tensor:
    with torch.no_grad():
        hooks = image_kv_ablation_hooks(model, inputs, baseline, keep, scope=scope)
        return model.run_with_hooks(inputs, fwd_hooks=hooks)


@pytest.mark.parametrize("scope", ["text", "all"])
def test_baseline_of_the_sample_itself_changes_nothing(tiny_model, make_setup, scope):
    """Ablating every head with the sample's own K/V as baseline is the clean run."""
    inputs = make_setup(tiny_model).inputs
    with torch.no_grad():
        clean = tiny_model(inputs)
    for row in range(inputs.batch_size):
        own = image_kv_baseline(tiny_model, inputs[row])
        out = run(tiny_model, inputs[row], own, ~keep_all(tiny_model, 1), scope)
        torch.testing.assert_close(out, clean[row : row + 1], atol=1e-5, rtol=0)


def test_text_scope_leaves_positions_up_to_the_image_end_unchanged(tiny_model, make_setup):
    s = make_setup(tiny_model)
    keep = keep_all(tiny_model)
    keep[:, 0, 1] = False
    with torch.no_grad():
        clean = tiny_model(s.inputs)
    out = run(tiny_model, s.inputs, s.baseline, keep)
    for row in range(2):
        # Left padding attends uniformly to everything (HF masks with a finite
        # minimum), so only real positions are compared.
        pad, end = int((s.inputs.attention_mask[row] == 0).sum()), s.inputs.image_span(row)[1]
        assert torch.equal(out[row, pad:end], clean[row, pad:end])
        assert (out[row, -1] - clean[row, -1]).abs().max() > 1e-3


def test_all_scope_changes_image_positions(tiny_model, make_setup):
    s = make_setup(tiny_model)
    keep = keep_all(tiny_model)
    keep[:, 0, :] = False
    with torch.no_grad():
        clean = tiny_model(s.inputs)
    out = run(tiny_model, s.inputs, s.baseline, keep, scope="all")
    start, end = s.inputs.image_span(0)
    assert torch.equal(out[0, :start], clean[0, :start])  # queries before the image
    assert (out[0, start + 1 : end] - clean[0, start + 1 : end]).abs().max() > 1e-3


def test_rows_with_different_masks_equal_separate_runs(tiny_model, make_setup):
    s = make_setup(tiny_model)
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, tiny_model.n_layers, tiny_model.n_heads, generator=g) >= 0.5
    batched = run(tiny_model, s.inputs, s.baseline, keep)
    for row in range(2):
        alone = tiny_model.prepare(
            random_images(2, tiny_model.image_size, seed=0)[row], s.inputs.questions[row]
        )
        single = run(tiny_model, alone, s.baseline, keep[row : row + 1])
        n = alone.seq_len  # row 1 is left-padded in the batch
        torch.testing.assert_close(batched[row, -n:], single[0], atol=1e-5, rtol=0)


def test_per_position_keep(tiny_model, make_setup):
    """Per-position masks constant over positions equal per-head masks; partial ones differ."""
    s = make_setup(tiny_model)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(2, tiny_model.n_layers, tiny_model.n_heads, generator=g) >= 0.5
    per_head = run(tiny_model, s.inputs, s.baseline, keep)
    expanded = keep[..., None].expand(-1, -1, -1, s.baseline.n_image)
    torch.testing.assert_close(run(tiny_model, s.inputs, s.baseline, expanded), per_head)

    positions = torch.zeros(2, s.baseline.n_image, dtype=torch.bool)
    positions[:, ::2] = True  # every other image position kept, in every head
    partial = positions[:, None, None].expand(-1, tiny_model.n_layers, tiny_model.n_heads, -1)
    none_kept = run(tiny_model, s.inputs, s.baseline, ~keep_all(tiny_model))
    out = run(tiny_model, s.inputs, s.baseline, partial)
    with torch.no_grad():
        clean = tiny_model(s.inputs)
    assert (out[:, -1] - clean[:, -1]).abs().max() > 1e-3
    assert (out[:, -1] - none_kept[:, -1]).abs().max() > 1e-3


def test_zero_baseline_and_context_manager(tiny_model, make_setup):
    s = make_setup(tiny_model)
    zero = image_kv_baseline(tiny_model, s.inputs, kind="zero")
    assert zero.kind == "zero" and zero.n_samples == 0
    assert not zero.k.any() and not zero.v.any()
    keep = keep_all(tiny_model)
    keep[:, -1, 0] = False
    with torch.no_grad(), image_kv_ablation(tiny_model, s.inputs, zero, keep):
        out = tiny_model(s.inputs)
        assert len(tiny_model.bridge.blocks[-1].attn.hook_z.fwd_hooks) == 1
    assert not tiny_model.bridge.blocks[-1].attn.hook_z.fwd_hooks  # removed on exit
    torch.testing.assert_close(out, run(tiny_model, s.inputs, zero, keep))
    assert torch.isfinite(out).all()
    assert (out[:, -1] - run(tiny_model, s.inputs, s.baseline, keep)[:, -1]).abs().max() > 1e-3


def test_mean_baseline_is_the_mean_of_hook_k_and_v(tiny_gqa, make_setup):
    s = make_setup(tiny_gqa)
    baseline = image_kv_baseline(tiny_gqa, s.inputs, batch_size=1)
    with torch.no_grad():
        _, cache = tiny_gqa.run_with_cache(s.inputs)
    assert baseline.image_span == (4, 20) and baseline.n_samples == 2
    for layer in range(tiny_gqa.n_layers):
        for name, got in (("k", baseline.k), ("v", baseline.v)):
            t = cache[f"blocks.{layer}.attn.hook_{name}"]  # [batch, pos, n_kv, d_head]
            rows = [t[r, s.inputs.positions("image", r)] for r in range(2)]
            want = torch.stack(rows).mean(0).transpose(0, 1)
            torch.testing.assert_close(got[layer], want)


# ------------------------------------------------------------------ brute force
def _rope(t: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Llama's rotate-half RoPE; ``t`` [batch, heads, n, d], ``positions`` [batch, n]."""
    d = t.shape[-1]
    angle = positions[:, None, :, None].double() / theta ** (torch.arange(0, d, 2) / d)
    cos, sin = angle.cos().float(), angle.sin().float()
    a, b = t[..., : d // 2], t[..., d // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


@pytest.mark.parametrize("scope", ["text", "all"])
@pytest.mark.parametrize("kind", ["mean", "zero"])
def test_hooks_match_brute_force_attention_gqa(tiny_gqa, tiny_paths, make_setup, scope, kind):
    """Recompute the last layer's attention from the checkpoint's weights with the
    baseline substituted for one query head, and compare with the hooked run."""
    model, path = tiny_gqa, Path(tiny_paths["gqa"])
    s = make_setup(model)
    inputs = s.inputs
    baseline = s.baseline if kind == "mean" else image_kv_baseline(model, inputs, kind="zero")
    layer, head = model.n_layers - 1, 1  # query heads 0 and 1 share KV head 0
    keep = keep_all(model)
    keep[:, layer, head] = False
    names = {f"blocks.{layer}.attn.hook_in", f"blocks.{layer}.hook_attn_out"}
    with torch.no_grad(), image_kv_ablation(model, inputs, baseline, keep, scope=scope):
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)

    config = json.loads((path / "config.json").read_text())["text_config"]
    theta = config["rope_parameters"]["rope_theta"]
    w = load_file(path / "model.safetensors")
    proj = {n: w[f"language_model.model.layers.{layer}.self_attn.{n}_proj.weight"] for n in "qkvo"}
    n_heads, n_kv, d = model.n_heads, model.n_kv_heads, model.d_head
    x = cache[f"blocks.{layer}.attn.hook_in"]
    b, t, _ = x.shape
    pos = inputs.position_ids
    q = _rope((x @ proj["q"].T).view(b, t, n_heads, d).transpose(1, 2), pos, theta)
    k = _rope((x @ proj["k"].T).view(b, t, n_kv, d).transpose(1, 2), pos, theta)
    v = (x @ proj["v"].T).view(b, t, n_kv, d).transpose(1, 2)

    image = inputs.image  # [batch, n_image]
    rows = torch.arange(b)[:, None]
    img_pos = pos[rows, image]
    k_base = _rope(baseline.k[layer][None].expand(b, -1, -1, -1), img_pos, theta)
    k_alt, v_alt = k.clone(), v.clone()
    k_alt[rows, :, image] = k_base.transpose(1, 2)
    v_alt[rows, :, image] = baseline.v[layer][None].expand(b, -1, -1, -1).transpose(1, 2)

    query_pos = torch.arange(t)
    visible = (query_pos[None, :, None] >= query_pos[None, None, :]) & inputs.attention_mask.bool()[
        :, None, :
    ]  # [batch, q, k]
    first = image[:, -1:] + 1 if scope == "text" else image[:, :1]
    sees_baseline = query_pos[None, :] >= first  # [batch, q]

    def attend(q_h, k_h, v_h):
        scores = (q_h @ k_h.transpose(-1, -2)) / d**0.5
        return scores.masked_fill(~visible, -1e9).softmax(-1) @ v_h

    z = torch.empty(b, t, n_heads, d)
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        out = attend(q[:, h], k[:, kv], v[:, kv])
        if h == head:
            ablated = attend(q[:, h], k_alt[:, kv], v_alt[:, kv])
            out = torch.where(sees_baseline[..., None], ablated, out)
        z[:, :, h] = out
    want = z.reshape(b, t, -1) @ proj["o"].T
    got = cache[f"blocks.{layer}.hook_attn_out"]
    real = inputs.attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)
    # The ablation did something, and only for the queries it should affect.
    z_clean = torch.stack([attend(q[:, h], k[:, h // 2], v[:, h // 2]) for h in range(n_heads)], 2)
    clean = z_clean.reshape(b, t, -1) @ proj["o"].T
    moved = (got - clean).abs().amax(-1) > 1e-4
    assert moved[real & sees_baseline].any()
    assert not moved[real & ~sees_baseline].any()


# ------------------------------------------------------------------ validation
def test_rejects_bad_masks(tiny_gqa, make_setup):
    s = make_setup(tiny_gqa)
    n_layers, n_heads = tiny_gqa.n_layers, tiny_gqa.n_heads
    ok = keep_all(tiny_gqa)
    with pytest.raises(TypeError, match="boolean"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok.float())
    with pytest.raises(TypeError, match="tensor"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok.tolist())
    with pytest.raises(ValueError, match=r"reshape\(-1, 2, 4\)"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok.reshape(2, n_layers * n_heads))
    with pytest.raises(ValueError, match="n_heads=4"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok[:, :, :3])
    with pytest.raises(ValueError, match=r"\[2, n_layers"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok[:1])
    with pytest.raises(ValueError, match="n_image=16"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok[..., None].expand(-1, -1, -1, 5))
    with pytest.raises(ValueError, match="scope"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ok, scope="image")


def test_rejects_mismatched_baselines_and_inputs(tiny_gqa, tiny_mha, make_setup):
    s = make_setup(tiny_gqa)
    ok = keep_all(tiny_gqa)
    other = tiny_gqa.prepare(random_images(1, 28), "Which number?", template=VICUNA_SYSTEM_TEMPLATE)
    with pytest.raises(ValueError, match="template"):
        image_kv_ablation_hooks(tiny_gqa, other, s.baseline, ok[:1])
    shifted = replace(s.baseline, image_span=(5, 21))
    with pytest.raises(ValueError, match="image span"):
        image_kv_ablation_hooks(tiny_gqa, s.inputs, shifted, ok)
    with pytest.raises(ValueError, match="n_kv_heads"):
        image_kv_ablation_hooks(tiny_mha, make_setup(tiny_mha).inputs, s.baseline, ok)
    no_image = replace(s.inputs, image=torch.full_like(s.inputs.image, -1))
    with pytest.raises(ValueError, match="no image tokens"):
        image_kv_ablation_hooks(tiny_gqa, no_image, s.baseline, ok)
    with pytest.raises(ValueError, match="no image tokens"):
        image_kv_baseline(tiny_gqa, no_image)
    with pytest.raises(ValueError, match="kind"):
        image_kv_baseline(tiny_gqa, s.inputs, kind="median")
    with pytest.raises(ValueError, match="built for a batch of 2"):
        hooks = image_kv_ablation_hooks(tiny_gqa, s.inputs, s.baseline, ~ok)
        tiny_gqa.run_with_hooks(s.inputs[0], fwd_hooks=hooks)
