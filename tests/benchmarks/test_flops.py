"""``benchmarks/flops.py``'s FLOP counts against torch's own count of the matmuls.

``torch.utils.flop_counter.FlopCounterMode`` counts every matmul a run executes (it does
not count the CPU flash-attention kernel), so it checks the non-attention part of
``executed_flops_per_mask`` independently; the attention part is the same formula as the
standard count's, applied to the layers the fused path attends in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import AblationEngine, image_kv_baseline
from tl_lvlm.testing import random_images

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from flops import executed_flops_per_mask  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_executed_flops_are_the_fused_runs_matmuls_plus_its_attention(tiny_paths, dtype):
    """fp32 takes layer 0 from its basis; bf16 projects layer 0 per mask."""
    model = HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu", dtype=dtype)
    size = model.image_size
    sample = model.prepare(random_images(1, size, seed=0), "What is it?")
    baseline = image_kv_baseline(model, model.prepare(random_images(2, size, seed=1), "What?"))
    engine = AblationEngine(model, sample, baseline)
    masks = torch.rand(16, model.n_layers, model.n_heads) > 0.5
    engine.run(masks)  # the first call also measures layer 0's basis
    with FlopCounterMode(display=False) as counter:
        engine.run(masks, batch_size=16)
    cfg = model.hf_model.config.text_config
    context = engine.prefix_len + engine.suffix_len
    attention = 2 * model.n_heads * model.d_head * context  # per query, per layer
    attended_queries = (cfg.num_hidden_layers - 2) * engine.suffix_len + 1
    want = counter.get_total_flops() / 16 + 2.0 * attention * attended_queries
    # The target's logit is a product and a sum (not a matmul): 2 * d_model more.
    assert executed_flops_per_mask(engine) == want + 2.0 * cfg.hidden_size
