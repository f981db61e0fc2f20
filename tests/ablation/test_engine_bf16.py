"""bf16 models: the engine's target logits are fp32, computed from the final hidden state.

A tiny LLaVA with LLaVA-1.5-7B's head width (``d_head`` 128), loaded once in fp32
and once in bf16 from the same checkpoint. In bf16 the step between representable
logits is 2^-7 of their magnitude's octave (0.125 for logits of 16-32); logits
computed in fp32 from the bf16 final hidden state are off that grid, and agree
with the fp32 model's within the bf16 noise of the forward pass.
"""

from __future__ import annotations

import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.ablation import image_kv_baseline
from tl_lvlm.ablation.engine import AblationEngine
from tl_lvlm.testing import TEST_QUESTIONS, TinyLlavaConfig, random_images, save_tiny_llava

CONFIG = TinyLlavaConfig(n_layers=2, n_heads=2, n_kv_heads=1, d_model=256, d_mlp=512, seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, HookedLVLM]:
    path = save_tiny_llava(tmp_path_factory.mktemp("d128") / "model", CONFIG)
    return {
        "fp32": HookedLVLM.from_pretrained(path, device="cpu", dtype="float32"),
        "bf16": HookedLVLM.from_pretrained(path, device="cpu", dtype=torch.bfloat16),
    }


def _engine_logits(model: HookedLVLM, scope: str) -> tuple[AblationEngine, torch.Tensor]:
    reference = model.prepare(random_images(4, 28, seed=5), TEST_QUESTIONS[0])
    sample = model.prepare(random_images(1, 28, seed=1), TEST_QUESTIONS[0])
    engine = AblationEngine(model, sample, image_kv_baseline(model, reference), scope=scope)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(48, model.n_layers, model.n_heads, generator=g) > 0.5
    return engine, engine.run(masks, batch_size=16, return_logits=True)


@pytest.mark.parametrize("scope", ["text", "all"])
def test_bf16_target_logits_are_fp32_and_agree_with_fp32(models, scope):
    assert models["bf16"].d_head == 128
    assert models["bf16"].hf_model.dtype == torch.bfloat16
    fp32, (fp32_target, _) = _engine_logits(models["fp32"], scope)
    bf16, (target, logits) = _engine_logits(models["bf16"], scope)
    assert bf16.target == fp32.target
    assert target.dtype == logits.dtype == torch.float32
    # Off the bf16 grid: rounding to bf16 changes (nearly) every value.
    on_grid = target == target.bfloat16().float()
    assert on_grid.float().mean() < 0.1, f"{int(on_grid.sum())} of {len(target)} on the bf16 grid"
    assert (logits != logits.bfloat16().float()).float().mean() > 0.9
    # Within bf16 noise of the fp32 model: a few bf16 steps of the logits' scale.
    step = 2.0**-7 * fp32_target.abs().max()
    assert (target - fp32_target).abs().max() <= 4 * step
    # ... and the clean logits too (hook path: HookedLVLM.final_logits).
    assert bf16.clean_logits.dtype == torch.float32
    assert abs(bf16.clean_logit - fp32.clean_logit) <= 4 * step
