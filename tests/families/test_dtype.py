"""``HookedLVLM.from_pretrained(..., dtype=...)``: "auto", names, torch dtypes; bad ones refused."""

from __future__ import annotations

import pytest
import torch

from tl_lvlm import HookedLVLM
from tl_lvlm.model import resolve_dtype


@pytest.mark.parametrize(
    "dtype, device, want",
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.bfloat16),
        ("auto", torch.device("cuda:1"), torch.bfloat16),
        ("float32", "cuda", torch.float32),
        ("bfloat16", "cpu", torch.bfloat16),
        ("float16", "cpu", torch.float16),
        (torch.bfloat16, "cpu", torch.bfloat16),
        (torch.float16, "cuda", torch.float16),
    ],
)
def test_resolve_dtype(dtype, device, want):
    assert resolve_dtype(dtype, device) is want


@pytest.mark.parametrize("bad", ["fp32", "half", torch.int8, 32, None])
def test_bad_dtype_is_refused_listing_the_choices(bad):
    with pytest.raises(
        ValueError,
        match=r"unsupported dtype .*'auto', one of \('float32', "
        r"'bfloat16', 'float16'\)",
    ):
        resolve_dtype(bad, "cpu")


def test_from_pretrained_loads_in_the_dtype(tiny_paths):
    assert HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu").hf_model.dtype == (
        torch.float32
    )
    model = HookedLVLM.from_pretrained(tiny_paths["gqa"], device="cpu", dtype="bfloat16")
    assert model.hf_model.dtype == torch.bfloat16
    inputs = model.prepare(torch.zeros(1, 3, 28, 28), "Which number?")
    assert inputs.pixel_values.dtype == torch.bfloat16
    assert model.final_logits(inputs).dtype == torch.float32


def test_from_pretrained_refuses_a_bad_dtype_before_loading(tmp_path):
    # tmp_path holds no checkpoint: the dtype is checked first.
    with pytest.raises(ValueError, match="unsupported dtype 'fp16'"):
        HookedLVLM.from_pretrained(tmp_path, device="cpu", dtype="fp16")
