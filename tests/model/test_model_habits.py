"""PyTorch and TransformerLens habits keep the HookedLVLM, and nothing runs image-blind.

``model.eval()``, ``model.to(...)`` and the other ``nn.Module`` habits return the model itself
(through the bridge they would return the bare bridge, without ``prepare``); calls given
anything but prepared inputs raise a ``TypeError`` naming ``prepare``; TransformerLens's
``get_token_position`` and per-layer ``blocks[l].attn.OV`` / ``.QK`` work with images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lvlm_cases import DIGIT_QUESTION, DIGITS

from tl_lvlm import HookedLVLM

HABITS = {
    "eval": lambda m: m.eval(),
    "train": lambda m: m.train(),
    "to cpu": lambda m: m.to("cpu"),
    "to float64": lambda m: m.to(torch.float64),
    "cpu": lambda m: m.cpu(),
    "float": lambda m: m.float(),
    "bfloat16": lambda m: m.bfloat16(),
    "half": lambda m: m.half(),
    "requires_grad_": lambda m: m.requires_grad_(False),
}


@pytest.fixture
def model() -> HookedLVLM:
    """A fresh copy for every test: the habits change the model's state."""
    return HookedLVLM.from_pretrained(DIGITS, device="cpu")


@pytest.fixture
def seven(digit_images, model):
    return model.prepare(digit_images[0][7], DIGIT_QUESTION)


@pytest.mark.parametrize("habit", HABITS.values(), ids=HABITS.keys())
def test_module_habits_return_the_hooked_lvlm(model, habit):
    assert habit(model) is model


def test_eval_to_cpu_answers_as_before(model, seven, digit_images):
    again = HookedLVLM.from_pretrained(DIGITS).eval().to("cpu")
    assert isinstance(again, HookedLVLM)
    inputs = again.prepare(digit_images[0][7], DIGIT_QUESTION)
    assert model.answer(seven)[1] == again.answer(inputs)[1] == [" seven"]
    torch.testing.assert_close(again(inputs), model(seven))


def test_dtype_habits_cast_the_weights(model, seven):
    model.to(torch.float64)
    assert model.hf_model.dtype == torch.float64
    assert model.answer(seven)[1] == [" seven"]
    model.float()
    assert model.hf_model.dtype == torch.float32
    assert not model.requires_grad_(False).hf_model.lm_head.weight.requires_grad


@pytest.mark.parametrize("call", ["forward", "run_with_cache", "run_with_hooks", "generate"])
@pytest.mark.parametrize("kind", ["string", "pil", "array", "token ids"])
def test_calls_without_prepared_inputs_name_prepare(model, seven, digit_images, call, kind):
    bad = {
        "string": "What is the main object?",
        "pil": digit_images[0][7],
        "array": np.zeros((32, 32, 3), dtype=np.uint8),
        "token ids": seven.input_ids,
    }[kind]
    fn = model if call == "forward" else getattr(model, call)
    with pytest.raises(TypeError, match=r"model\.prepare\(image, question\).*model\.bind"):
        fn(bad)


def test_get_token_position_and_to_single_token_with_lvlm_inputs(model, seven):
    role = model.to_single_token(" ASSISTANT")
    pos = model.get_token_position(" ASSISTANT", seven)
    assert int(seven.input_ids[0, pos]) == role
    assert pos == int(seven.positions("role", 0)[0])
    assert model.get_token_position(role, seven, mode="last") == pos


def test_per_layer_circuits_are_the_stacked_ones(model):
    for layer in (0, model.n_layers - 1):
        ov, qk = model.blocks[layer].attn.OV, model.blocks[layer].attn.QK
        assert ov.shape == (model.n_heads, model.cfg.d_model, model.cfg.d_model)
        torch.testing.assert_close(ov.AB, model.OV[layer].AB)
        torch.testing.assert_close(qk.AB, model.QK[layer].AB)
    # Everything else is the bridge's component.
    assert model.blocks[0].attn.hook_z is model.bridge.blocks[0].attn.hook_z
    assert len(model.blocks) == model.n_layers
