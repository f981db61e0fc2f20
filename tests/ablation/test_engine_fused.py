"""The engine's fused attention path: its log-sum-exp merge and its row routing edge cases.

The contract test (``tests/families/test_contract.py``) checks both attention paths
against the hook reference for every family; these tests pin the pieces: the merge
equals one softmax over the union of the key sets, and the routing handles KV heads
whose rows are all kept or all ablated (no rows for one of the two kernel calls).
"""

from __future__ import annotations

import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation.engine import (
    AblationEngine,
    Routing,
    _attention_with_lse,
    _merge,
    steady_allocator,
)


def test_merge_equals_one_softmax_over_both_key_sets():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (5, 40, 40))
    scale = 16**-0.5
    out_a, lse_a = _attention_with_lse(q, k[:, :, :25], v[:, :, :25], scale, causal=False)
    out_b, lse_b = _attention_with_lse(q, k[:, :, 25:], v[:, :, 25:], scale, causal=False)
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)
    assert (_merge(out_a, lse_a, out_b, lse_b) - probs @ v).abs().max() < 1e-5
    assert (
        lse_a - torch.logsumexp(q @ k[:, :, :25].transpose(-1, -2) * scale, -1)
    ).abs().max() < 1e-5


def test_causal_attention_sees_keys_up_to_its_own_position():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g) for _ in range(3))
    out, _ = _attention_with_lse(q, k, v, 0.5, causal=True)
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(
        torch.ones(6, 6).triu(1).bool(), -torch.inf
    )
    assert (out - torch.softmax(scores, -1) @ v).abs().max() < 1e-5


def test_routing_segments_hold_each_kv_heads_kept_and_ablated_rows():
    """Brute force: segment (kv, ablated) holds exactly the query rows of KV head kv's query
    heads whose mask says so, in HF's ``[batch, queries, n_heads]`` row order, padded to whole
    blocks of rows; ``inverse`` finds every row; layer 0 is not routed, and the last layer
    routes the final query only."""
    b, n_layers, n_heads, n_kv, s = 3, 4, 4, 2, 5
    keep = torch.rand(n_layers, b, n_heads, generator=torch.Generator().manual_seed(0)) > 0.5
    keep[1, :, :2] = True  # KV head 0 of layer 1 has no ablated rows
    keep[3, :, 2:] = False  # KV head 1 of the last layer has no kept rows
    routing = Routing.of(keep, n_kv, s, torch.device("cpu"))
    assert routing.gather[0] is None and routing.segments[0] == []
    for layer, queries in ((1, s), (2, s), (3, 1)):
        gather, inverse = routing.gather[layer], routing.inverse[layer]
        assert (gather[inverse] == torch.arange(b * queries * n_heads)).all()
        seen = set()
        for kv, ablated, start, length in routing.segments[layer]:
            want = {
                (i * queries + t) * n_heads + h
                for i in range(b)
                for t in range(queries)
                for h in range(kv * 2, kv * 2 + 2)
                if bool(keep[layer, i, h]) != ablated
            }
            assert start % 8 == 0 and length % 8 == 0 and len(want) <= length < len(want) + 8
            assert set(gather[start : start + len(want)].tolist()) == want
            found = inverse[sorted(want)]
            assert ((found >= start) & (found < start + len(want))).all()
            seen.add((kv, ablated))
        missing = {1: (0, True), 3: (1, False)}.get(layer)
        assert seen == {(kv, a) for kv in range(n_kv) for a in (False, True)} - {missing}


@pytest.mark.parametrize("fill", [True, False], ids=["all-kept", "all-ablated"])
def test_single_uniform_mask_equals_eager(tiny_gqa, make_setup, fill):
    """One mask, every head kept (or ablated): every KV head's other kernel call has no rows."""
    setup = make_setup(tiny_gqa)
    sample = setup.inputs[0]
    fused = AblationEngine(tiny_gqa, sample, setup.baseline)
    eager = AblationEngine(tiny_gqa, sample, setup.baseline, attention="eager")
    mask = torch.full((1, tiny_gqa.n_layers, tiny_gqa.n_heads), fill)
    got = fused.run(mask)
    assert (got - eager.run(mask)).abs().max() <= 1e-5
    if fill:
        assert abs(float(got[0]) - fused.clean_logit) <= 1e-4


def test_bad_attention_argument_is_refused(tiny_gqa, make_setup):
    setup = make_setup(tiny_gqa)
    with pytest.raises(ValueError, match="'fused' or 'eager'"):
        AblationEngine(tiny_gqa, setup.inputs[0], setup.baseline, attention="flash")


def test_engine_fixes_the_allocator_where_glibc_has_it():
    # Linux CI runs glibc; elsewhere steady_allocator is a documented no-op (False).
    import sys

    if sys.platform == "linux":
        assert steady_allocator() is True


@pytest.mark.parametrize("attention", ["fused", "eager"])
def test_a_masks_logit_does_not_depend_on_its_batch(tiny_gqa, make_setup, attention):
    """Bit for bit: head attribution's resumed and round-by-round runs rely on it."""
    setup = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, setup.inputs[0], setup.baseline, attention=attention)
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(96, tiny_gqa.n_layers, tiny_gqa.n_heads, generator=g) > 0.5
    reference = engine.run(masks, batch_size=96)
    for batch in (1, 2, 5, 8, 23, 40):
        assert torch.equal(engine.run(masks, batch_size=batch), reference), batch


def _layer0_outputs(engine, masks) -> list[torch.Tensor]:
    """Layer 0's attention-module outputs (the HF module's forward) during ``engine.run``."""
    outputs = []
    module = engine.model.family.attention(0)
    hook = module.register_forward_hook(lambda m, args, out: outputs.append(out[0].clone()))
    try:
        engine.run(masks, batch_size=masks.shape[0])
    finally:
        hook.remove()
    return outputs


def test_first_layer_basis_gives_the_attention_modules_outputs(tiny_gqa, make_setup):
    """The fused path's layer-0 stand-in against the HF module run by the eager path."""
    setup = make_setup(tiny_gqa)
    sample = setup.inputs[0]
    masks = torch.rand(12, tiny_gqa.n_layers, tiny_gqa.n_heads) > 0.5
    eager = AblationEngine(tiny_gqa, sample, setup.baseline, attention="eager")
    (want,) = _layer0_outputs(eager, masks)
    fused = AblationEngine(tiny_gqa, sample, setup.baseline)
    # The module runs once, for the basis; the masks' batch never reaches it.
    (basis_run,) = _layer0_outputs(fused, masks)
    assert basis_run.shape[0] == tiny_gqa.n_heads + 1
    got = fused._first_layer_basis.outputs(masks[:, 0], want.dtype)
    assert (got - want).abs().max() <= 1e-5
    assert (want[1:] - want[0]).abs().max() > 1e-3  # the masks do change layer 0's output


def test_layer_0_runs_where_a_later_layer_reads_its_keys_and_values(
    tiny_gqa, make_setup, monkeypatch
):
    setup = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, setup.inputs[0], setup.baseline)
    monkeypatch.setattr(type(tiny_gqa.family), "kv_source", lambda self, layer: 0)
    masks = torch.rand(5, tiny_gqa.n_layers, tiny_gqa.n_heads) > 0.5
    assert [out.shape[0] for out in _layer0_outputs(engine, masks)] == [5]


def test_layer_0_runs_per_mask_in_a_16_bit_model(tiny_paths, make_setup):
    model = HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu", dtype=torch.bfloat16)
    setup = make_setup(model)
    engine = AblationEngine(model, setup.inputs[0], setup.baseline)
    masks = torch.rand(5, model.n_layers, model.n_heads) > 0.5
    assert [out.shape[0] for out in _layer0_outputs(engine, masks)] == [5]
