"""Families HookedLVLM refuses, each with an error naming the family and the reason."""

from __future__ import annotations

import pytest
from transformers import (
    BertConfig,
    LlavaOnevisionConfig,
    Qwen2_5_VLConfig,
)

from tl_lvlm import HookedLVLM


@pytest.mark.parametrize(
    "config, family",
    [
        (
            LlavaOnevisionConfig(architectures=["LlavaOnevisionForConditionalGeneration"]),
            "LLaVA-OneVision",
        ),
        (Qwen2_5_VLConfig(architectures=["Qwen2_5_VLForConditionalGeneration"]), "Qwen2.5-VL"),
    ],
    ids=["llava_onevision", "qwen2_5_vl"],
)
def test_family_without_torchvision_free_processor_is_refused(tmp_path, config, family):
    config.save_pretrained(tmp_path)
    with pytest.raises(NotImplementedError, match=f"{family} .* torchvision"):
        HookedLVLM.from_pretrained(tmp_path, device="cpu")


def test_unknown_architecture_is_refused(tmp_path):
    BertConfig(architectures=["BertModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture 'BertModel'"):
        HookedLVLM.from_pretrained(tmp_path, device="cpu")
