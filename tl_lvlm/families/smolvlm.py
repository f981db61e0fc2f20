"""SmolVLM (``SmolVLMForConditionalGeneration``): the Idefics3 layout under other class names.

The model is Idefics3's (``model.vision_model``, a pixel-shuffle ``model.connector``,
a Llama-shaped ``model.text_model``, the same tiles, global image and marker tokens),
so the family is :class:`~tl_lvlm.families.idefics3.Idefics3Family` with three changes:

- TransformerLens 4.3 has no adapter for ``SmolVLMForConditionalGeneration``; its
  ``Idefics3ArchitectureAdapter`` maps exactly these module paths, so the bridge boots
  with the config naming ``Idefics3ForConditionalGeneration`` for the boot only
  (``bridge_architecture``). The least invasive way: TransformerLens picks the
  architecture from its module-level ``SUPPORTED_ARCHITECTURES`` table before its
  factory's registry, so registering an adapter under SmolVLM's name would mean editing
  both; this way neither is touched and no adapter is copied here;
- ``SmolVLMProcessor`` takes one list of images per prompt (``nested_images``);
- without torchvision (or without ``num2words``, which only its video prompts use) the
  processor is built without its video processor
  (:func:`tl_lvlm.families.processors.smolvlm_processor_class`).
"""

from __future__ import annotations

from pathlib import Path

from tl_lvlm.families.idefics3 import Idefics3Family
from tl_lvlm.families.processors import (
    num2words_available,
    smolvlm_processor_class,
    torchvision_available,
)


class SmolVLMFamily(Idefics3Family):
    name = "SmolVLM"
    architecture = "SmolVLMForConditionalGeneration"
    bridge_architecture = Idefics3Family.architecture
    nested_images = True

    @classmethod
    def load_processor(cls, path: str | Path):
        if torchvision_available() and num2words_available():
            return super().load_processor(path)
        return smolvlm_processor_class().from_pretrained(path)
