"""Architectures HookedLVLM refuses, with an error naming the architecture and the fix."""

from __future__ import annotations

import pytest
from transformers import BertConfig

from tl_lvlm import HookedLVLM


def test_unknown_architecture_is_refused(tmp_path):
    BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture 'BertModel'"):
        HookedLVLM.from_pretrained(tmp_path, device="cpu")
