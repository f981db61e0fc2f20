"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): refused until its family lands."""

from __future__ import annotations

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.llava_onevision import NO_VIDEO_PROCESSOR


class Qwen2_5_VLFamily(LVLMFamily):
    name = "Qwen2.5-VL"
    architecture = "Qwen2_5_VLForConditionalGeneration"
    image_prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    fixed_resolution = False
    unsupported = (
        NO_VIDEO_PROCESSOR
        + " (TransformerLens's Qwen2.5-VL adapter also refuses to load without torchvision)"
    )
