"""Mistral 3 (``Mistral3ForConditionalGeneration``): a Pixtral vision tower, a patch merger, a
Mistral decoder (Mistral-Small-3.1 / 3.2, the LLaVA layout).

Quirks:

- variable resolution: the processor scales an image down to its longest edge and up
  to whole ``patch_size * spatial_merge_size`` blocks, keeping its aspect; the Pixtral
  tower embeds its patches with 2-D RoPE, and the patch merger folds each
  ``spatial_merge_size`` square of patches into one image token. ``pixel_values`` of a
  batch are padded to the largest image; ``image_sizes`` (``[batch, 2]``) says where
  each image is;
- the image tokens form rows: every row of ``[IMG]`` tokens ends in ``[IMG_BREAK]``,
  the last in ``[IMG_END]``. Those two are text embeddings, not image features: the
  image group (what image-K/V ablation replaces) is the ``[IMG]`` tokens only, and the
  breaks between them belong to no group (``interleaved_image``); ``[IMG_END]`` opens
  the question group. With scope ``"text"`` the breaks are image-side queries (they
  come before the last image token) and see the clean image;
- the decoder is Mistral with ordinary RoPE, which TransformerBridge reimplements
  (TransformerLens 4.3's ``Mistral3ArchitectureAdapter``, the LLaVA adapter with the
  Pixtral tower delegated whole), so the default hooks, the engine and knockout apply;
- transformers' ``PixtralProcessor`` module imports a helper from the torchvision image
  processor's module; without torchvision the real class is imported with the PIL
  module's identical helper (:func:`tl_lvlm.families.processors.pixtral_processor_class`).

Image-token maps are the row grid: ``image_sizes // (patch_size * spatial_merge_size)``
rows and columns over the whole (stretched) image.
"""

from __future__ import annotations

from pathlib import Path

from jaxtyping import Int
from torch import Tensor

from tl_lvlm.families.base import LVLMFamily
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.families.processors import pixtral_processor_class, torchvision_available
from tl_lvlm.inputs import LVLMInputs


class Mistral3Family(LVLMFamily):
    name = "Mistral 3"
    architecture = "Mistral3ForConditionalGeneration"
    image_prompt = "[IMG]"
    fixed_resolution = False
    interleaved_image = True

    @classmethod
    def load_processor(cls, path: str | Path):
        if torchvision_available():
            return super().load_processor(path)
        return pixtral_processor_class().from_pretrained(path)

    @classmethod
    def image_text(cls, processor, ids: Int[Tensor, " pos"], image: Int[Tensor, " n_image"]) -> str:
        """The rows of ``[IMG]`` tokens with their breaks, through the closing ``[IMG_END]``."""
        return processor.tokenizer.decode(ids[int(image[0]) : int(image[-1]) + 2])

    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The row grid of merged patches over the whole (stretched) image."""
        self.require("image_attribution")
        block = int(self.config.vision_config.patch_size) * int(self.config.spatial_merge_size)
        height, width = (int(x) for x in sample.extra["image_sizes"][0])
        geometry = PatchGeometry(height // block, width // block, "stretch")
        n_image = sample.positions("image", 0).numel()
        if geometry.n_tokens != n_image:
            raise ValueError(
                f"{self.name}: image_sizes {(height, width)} give a {geometry.rows} x "
                f"{geometry.cols} grid, not the {n_image} image tokens of the prompt"
            )
        return geometry
