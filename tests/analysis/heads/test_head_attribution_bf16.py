"""Head attribution of the planted model loaded in bf16 still ranks the planted heads first."""

from __future__ import annotations

import torch

from attribution import rank_by
from tl_lvlm import HookedLVLM
from tl_lvlm.analysis.heads import head_attribution

pytest_plugins = ["planted_llava"]  # the planted model and its fixtures


def test_bf16_planted_heads_ranked_first(planted_path, planted_samples, planted_heads):
    model = HookedLVLM.from_pretrained(planted_path, device="cpu", dtype="bfloat16")
    assert model.hf_model.dtype == torch.bfloat16
    result = head_attribution(model, planted_samples, n_masks=300, progress=False)
    k = len(planted_heads)
    assert len(result.sample_ids) >= 2
    for coef in result.coef.reshape(len(result.coef), -1):
        assert set(rank_by(coef)[:k]) == planted_heads
    assert result.fits[0].r2 > 0.9
