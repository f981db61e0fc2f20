"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest

from tl_lvlm import model as model_module


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded: the mistake must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(model_module.HookedLVLM, "from_pretrained", refuse)
