"""AblationEngine (tl_lvlm.ablation.engine) against the hook reference, and its contract."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_ablation_hooks, image_kv_baseline
from tl_lvlm.ablation.engine import ATTENTION_NAME, CPU_MAX_BATCH, AblationEngine, hf_modules
from tl_lvlm.inputs.templates import VICUNA_SYSTEM_TEMPLATE
from tl_lvlm.testing import random_images


def random_masks(model, n: int, p_ablate: float = 0.75, seed: int = 0) -> torch.Tensor:
    """``n`` random masks plus the all-kept and all-ablated ones."""
    shape = (model.n_layers, model.n_heads)
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, *shape, generator=g) >= p_ablate
    kept = torch.ones(1, *shape, dtype=torch.bool)
    return torch.cat([masks, kept, ~kept])


def reference(model, sample, baseline, masks, scope="text") -> torch.Tensor:
    """Final-position logits of the hook reference, one batch row per mask."""
    rows = sample[[0] * masks.shape[0]]
    hooks = image_kv_ablation_hooks(model, rows, baseline, masks, scope=scope)
    with torch.no_grad():
        return model.run_with_hooks(rows, fwd_hooks=hooks)[:, -1].float()


@pytest.mark.parametrize("scope", ["text", "all"])
def test_engine_matches_hook_reference(tiny_model, make_setup, scope):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    engine = AblationEngine(tiny_model, sample, s.baseline, scope=scope)
    masks = random_masks(tiny_model, 64)
    got = engine.run(masks, batch_size=16)
    want = reference(tiny_model, sample, s.baseline, masks, scope)[:, engine.target]
    assert got.shape == (66,) and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-4
    assert got.std() > 1e-2  # the masks do change the answer's logit
    assert abs(got[-2] - engine.clean_logit) <= 1e-4


def test_compiled_layers_equal_the_hook_reference(tiny_gqa, make_setup):
    """``compile_layers``: each decoder layer through dynamo (its ``"eager"`` backend captures
    the graphs, the engine's attention a graph break, without inductor's C++ build) gives
    the hook reference's logits across batch sizes, and the bridge gets its modules back."""
    setup = make_setup(tiny_gqa)
    sample = setup.inputs[0]
    engine = AblationEngine(tiny_gqa, sample, setup.baseline, compile_layers="eager")
    masks = random_masks(tiny_gqa, 9)  # batches of 4, 4 and 3
    got = engine.run(masks, batch_size=4)
    want = reference(tiny_gqa, sample, setup.baseline, masks)[:, engine.target]
    assert (got - want).abs().max() <= 1e-4
    assert got.std() > 1e-2
    layers = tiny_gqa.hf_model.model.language_model.layers
    assert not any(isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in layers)
    # The bridge's own forward still runs (its wrappers are back in place).
    logits = tiny_gqa(sample)[:, -1]
    assert (logits[0, engine.target] - engine.clean_logit).abs() <= 1e-4


def test_engine_per_position_masks_match_hook_reference(tiny_model, make_setup):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    engine = AblationEngine(tiny_model, sample, s.baseline)
    g = torch.Generator().manual_seed(3)
    shape = (8, tiny_model.n_layers, tiny_model.n_heads, s.baseline.n_image)
    masks = torch.rand(shape, generator=g) >= 0.5
    got = engine.run(masks, batch_size=3)
    want = reference(tiny_model, sample, s.baseline, masks)[:, engine.target]
    assert (got - want).abs().max() <= 1e-4
    # Per-position masks constant over positions are the per-head masks.
    per_head = random_masks(tiny_model, 6)
    expanded = per_head[..., None].expand(-1, -1, -1, s.baseline.n_image)
    assert (engine.run(expanded) - engine.run(per_head)).abs().max() <= 1e-5


def test_padded_sample_and_logits(tiny_gqa, make_setup):
    """A left-padded row runs like its unpadded prompt; full logits on request."""
    s = make_setup(tiny_gqa)
    padded = s.inputs[1]
    alone = tiny_gqa.prepare(random_images(2, 28, seed=0)[1], s.inputs.questions[1])
    masks = random_masks(tiny_gqa, 16)
    engine = AblationEngine(tiny_gqa, padded, s.baseline)
    target, logits = engine.run(masks, return_logits=True)
    assert logits.shape == (18, len(tiny_gqa.tokenizer))
    assert torch.equal(logits[:, engine.target], target)
    assert (logits - reference(tiny_gqa, padded, s.baseline, masks)).abs().max() <= 1e-4
    unpadded = AblationEngine(tiny_gqa, alone, s.baseline, target=engine.target)
    assert (unpadded.run(masks) - target).abs().max() <= 1e-4


def test_all_kept_reproduces_the_clean_forward(tiny_model, make_setup):
    s = make_setup(tiny_model)
    sample = s.inputs[0]
    with torch.no_grad():
        clean = tiny_model(sample)[0, -1]
    engine = AblationEngine(tiny_model, sample, s.baseline)
    assert engine.target == int(clean.argmax())
    assert engine.clean_logit == pytest.approx(float(clean[engine.target]), abs=1e-6)
    kept = torch.ones(1, tiny_model.n_layers, tiny_model.n_heads, dtype=torch.bool)
    y, logits = engine.run(kept, return_logits=True)
    assert abs(float(y[0]) - engine.clean_logit) <= 1e-4
    assert (logits[0] - clean).abs().max() <= 1e-4
    other = AblationEngine(tiny_model, sample, s.baseline, target=7)
    assert other.target == 7 and abs(float(other.run(kept)[0]) - float(clean[7])) <= 1e-4


def test_numpy_masks_auto_batch_size_and_progress(tiny_gqa, make_setup, capsys):
    s = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, s.inputs[0], s.baseline)
    masks = random_masks(tiny_gqa, 10)
    assert 1 <= engine.auto_batch_size() <= CPU_MAX_BATCH  # the CPU default cap
    assert engine.auto_batch_size(max_batch=3) == 3
    y = engine.run(masks.numpy())
    assert torch.allclose(y, engine.run(masks, batch_size=4, progress=True), atol=1e-5, rtol=0)
    assert "12/12" in capsys.readouterr().err


def test_bf16(tiny_paths, make_setup):
    model = HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu", dtype=torch.bfloat16)
    s = make_setup(model)
    assert s.baseline.k.dtype == torch.bfloat16
    engine = AblationEngine(model, s.inputs[0], s.baseline)
    masks = random_masks(model, 16)
    got = engine.run(masks)
    want = reference(model, s.inputs[0], s.baseline, masks)[:, engine.target]
    spread = float(want.max() - want.min())
    assert (got - want).abs().max() <= 0.05 * max(spread, 1.0)


def test_bridge_keeps_working_after_the_engine(tiny_gqa, make_setup):
    s = make_setup(tiny_gqa)
    hf = tiny_gqa.hf_model
    layers = hf.model.language_model.layers
    wrapped = [type(m) for m in hf.modules()]
    with torch.no_grad():
        before = tiny_gqa(s.inputs)
    engine = AblationEngine(tiny_gqa, s.inputs[0], s.baseline)
    engine.run(random_masks(tiny_gqa, 4))
    assert [type(m) for m in hf.modules()] == wrapped
    assert type(layers[0]).__name__ == "BlockBridge"
    assert hf.config.text_config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.equal(tiny_gqa(s.inputs), before)
        _, cache = tiny_gqa.run_with_cache(s.inputs, names_filter="blocks.1.attn.hook_z")
    assert cache["blocks.1.attn.hook_z"].shape == (2, s.inputs.seq_len, 4, 16)
    # ... also when the engine's HF run fails half-way.
    with pytest.raises(RuntimeError, match="boom"), hf_modules(tiny_gqa, ATTENTION_NAME):
        assert type(layers[0]).__name__ == "LlamaDecoderLayer"
        raise RuntimeError("boom")
    assert [type(m) for m in hf.modules()] == wrapped
    assert hf.config.text_config._attn_implementation == "eager"


class AllocatedShapes(TorchDispatchMode):
    """Records the shape of every tensor an op allocates (views excluded)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.shapes.append(tuple(t.shape))
        return out


def test_memory_does_not_copy_the_prefix_per_mask(tiny_gqa, make_setup):
    """No allocation of K/V size scales with the batch: the prefix is shared."""
    s = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, s.inputs[0], s.baseline)
    n_prefix, n_suffix = engine.prefix_len, engine.suffix_len
    d, n_kv, n_heads = tiny_gqa.d_head, tiny_gqa.n_kv_heads, tiny_gqa.n_heads
    assert n_prefix not in (d, 2 * d, n_suffix)  # so that shapes below are unambiguous
    for per_position in (False, True):
        largest = {}
        for batch in (4, 16):
            masks = random_masks(tiny_gqa, batch - 2)
            if per_position:
                masks = masks[..., None].expand(-1, -1, -1, engine.n_image)
            with AllocatedShapes() as mode:
                engine.run(masks, batch_size=batch)
            kv_like = [sh for sh in mode.shapes if n_prefix in sh[:-1] and sh[-1] in (d, 2 * d)]
            # At most one layer's prefix K or V (a contiguous copy), never per mask.
            assert all(np.prod(sh) <= n_kv * n_prefix * 2 * d for sh in kv_like), kv_like
            largest[batch] = max(np.prod(sh) for sh in mode.shapes)
        # What grows with the batch is the suffix queries' attention scores, not K/V.
        per_mask = (largest[16] - largest[4]) / 12
        assert per_mask <= n_heads * n_suffix * (n_prefix + n_suffix)


def test_engine_rejects_bad_arguments(tiny_gqa, tiny_mha, make_setup):
    s = make_setup(tiny_gqa)
    engine = AblationEngine(tiny_gqa, s.inputs[0], s.baseline)
    masks = random_masks(tiny_gqa, 2)
    with pytest.raises(TypeError, match="boolean"):
        engine.run(masks.float())
    with pytest.raises(TypeError, match="boolean"):
        engine.run(masks.numpy().astype(np.int64))
    with pytest.raises(ValueError, match=r"reshape\(-1, 2, 4\)"):
        engine.run(masks.reshape(4, -1))
    with pytest.raises(ValueError, match="n_layers=2, n_heads=4"):
        engine.run(masks.transpose(1, 2))
    with pytest.raises(ValueError, match="one sample"):
        AblationEngine(tiny_gqa, s.inputs, s.baseline)
    no_image = replace(s.inputs[0], image=torch.full_like(s.inputs.image[:1], -1))
    with pytest.raises(ValueError, match="no image tokens"):
        AblationEngine(tiny_gqa, no_image, s.baseline)
    other = tiny_gqa.prepare(random_images(1, 28), "Which number?", template=VICUNA_SYSTEM_TEMPLATE)
    with pytest.raises(ValueError, match="template"):
        AblationEngine(tiny_gqa, other, s.baseline)
    with pytest.raises(ValueError, match="image span"):
        AblationEngine(tiny_gqa, s.inputs[0], replace(s.baseline, image_span=(3, 19)))
    with pytest.raises(ValueError, match="n_kv_heads"):
        AblationEngine(tiny_mha, make_setup(tiny_mha).inputs[0], s.baseline)
    with pytest.raises(ValueError, match="target"):
        AblationEngine(tiny_gqa, s.inputs[0], s.baseline, target=10**6)
    with pytest.raises(ValueError, match="scope"):
        AblationEngine(tiny_gqa, s.inputs[0], s.baseline, scope="image")
    zero = image_kv_baseline(tiny_gqa, s.inputs, kind="zero")
    assert AblationEngine(tiny_gqa, s.inputs[0], zero).run(masks).isfinite().all()


def test_engine_keeps_nothing_of_a_model_after_it_is_gone(tiny_paths):
    """The stand-in modules and compiled layers live on the model, not in a global cache."""
    model = HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu")
    sample = model.prepare(random_images(1, model.image_size, seed=0), "What is it?")
    engine = AblationEngine(model, sample, image_kv_baseline(model, sample), compile_layers="eager")
    engine.run(torch.rand(4, model.n_layers, model.n_heads) > 0.5)
    gone = weakref.ref(model.family.attention(0))
    del model, engine, sample
    gc.collect()
    assert gone() is None
