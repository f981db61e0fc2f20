"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): refused until its family lands."""

from __future__ import annotations

from tl_lvlm.families.base import LVLMFamily

NO_VIDEO_PROCESSOR = (
    "its processor cannot be built without torchvision in transformers 5 (the "
    "processor class requires a video processor, whose base class only exists with "
    "torchvision installed), and tl-lvlm's environment cannot install torchvision, so "
    "this family has never been run here; it is refused rather than shipped untested"
)


class LlavaOnevisionFamily(LVLMFamily):
    name = "LLaVA-OneVision"
    architecture = "LlavaOnevisionForConditionalGeneration"
    fixed_resolution = False
    unsupported = NO_VIDEO_PROCESSOR
