"""Fixtures of tests/analysis: the bundled tiny-digits model, loaded once."""

from __future__ import annotations

import pytest

from tl_lvlm import HookedLVLM


@pytest.fixture(scope="session")
def digits_model() -> HookedLVLM:
    return HookedLVLM.from_pretrained("tl-lvlm/tiny-digits", device="cpu")
