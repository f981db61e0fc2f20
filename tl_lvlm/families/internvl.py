"""InternVL-3 / 3.5 (``InternVLForConditionalGeneration``): InternViT tiles, a 0.5 pixel
shuffle, a 2-layer projector, a Qwen2 / Qwen3 (or Llama) decoder.

Quirks:

- the image prompt is ``<IMG_CONTEXT>`` (the chat template writes it before the text);
  the processor expands it to ``<img>``, ``image_seq_length`` context tokens per tile,
  ``</img>``. Only the context tokens are image tokens: ``<img>`` ends the prefix group
  and ``</img>`` starts the question group, as the template places them;
- the image processor (``GotOcr2ImageProcessor``) resizes the image, without keeping its
  aspect, to a canvas of ``rows x cols`` tiles (the grid whose aspect is closest to the
  image's, 1 to ``max_patches`` tiles), crops the tiles row by row and, when there are
  several, appends a thumbnail (the whole image resized to one tile). Each tile's
  ``(side / patch)**2`` patches are pixel-shuffled: every 2 x 2 block of patches becomes
  one token, row by row over the tile;
- ``pixel_values`` are the tiles of the whole batch in one ``[sum of tiles, 3, side, side]``
  tensor; :meth:`process` keeps them per row (``[batch, max tiles, 3, side, side]``,
  zero-padded) with each row's tile grid (``extra["tile_grid"]``, ``[batch, 2]`` rows and
  cols), and :meth:`model_kwargs` concatenates them back;
- image-token maps (:meth:`patch_geometry`) place the tiles' tokens on the resized image
  (a ``rows * g x cols * g`` grid, ``g`` tokens per tile side, over the whole image); the
  thumbnail's tokens are ablated with the rest but left out of the map;
- the processor takes a video processor, which needs torchvision; without it the
  processor is built without one (:func:`internvl_processor_class`, as in
  :mod:`tl_lvlm.families.processors`).

The adapter. TransformerLens 4.3 has none for InternVL. Its module layout is LLaVA's
(``model.vision_tower``, ``model.multi_modal_projector``, ``model.language_model`` with
Llama-style layers, ``lm_head``), so :func:`internvl_adapter_class` is TransformerLens's
``LlavaArchitectureAdapter`` with the vision tower delegated opaquely (InternViT has no
CLIP-shaped bridge; TransformerLens's Mistral3 adapter does the same for Pixtral). The
decoder's mapping is LLaVA's: Llama and Qwen2 layers, and Qwen3's q/k norms as its
optional submodules. It is registered with the factory only while tl-lvlm boots the
bridge (:func:`~tl_lvlm.families.base.adapter_registered`), the least invasive way:
importing tl-lvlm changes nothing in TransformerLens, a user's own registration for the
name is restored after the boot, and no package metadata is needed (TransformerLens's
``transformer_lens.architectures`` entry point would register it for every process that
imports TransformerLens).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import no_type_check

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_lvlm.families.base import LVLMFamily, adapter_registered
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.families.processors import _SavedAsStandard, load_image_processor_only
from tl_lvlm.inputs import LVLMInputs

#: Text towers whose layers the LLaVA mapping describes (dense, Llama-style blocks).
DENSE_TEXT_MODELS = ("llama", "qwen2", "qwen3")


@functools.cache
def internvl_processor_class() -> type:
    """``InternVLProcessor`` without a video processor (no torchvision)."""
    from transformers import InternVLProcessor

    class InternVLImageProcessor(_SavedAsStandard, InternVLProcessor):
        """``InternVLProcessor`` for images only (no video processor, no torchvision)."""

        standard_class = InternVLProcessor.__name__

        # The parent's parameters minus video_processor: from_pretrained passes a
        # processor_config.json entry only when __init__ names it. no_type_check: HF reads
        # it from __init__.__code__ (see tl_lvlm.families.processors).
        @no_type_check
        def __init__(
            self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None
        ):
            super().__init__(
                image_processor,
                tokenizer,
                None,
                image_seq_length=image_seq_length,
                chat_template=chat_template,
            )

    return InternVLImageProcessor


def internvl_processor(
    image_processor, tokenizer, chat_template: str | None = None, image_seq_length: int = 256
):
    """An ``InternVLProcessor`` of ``image_processor`` and ``tokenizer``, no video processor."""
    return internvl_processor_class()(
        image_processor, tokenizer, image_seq_length=image_seq_length, chat_template=chat_template
    )


@functools.cache
def internvl_adapter_class() -> type:
    """TransformerLens's LLaVA adapter with InternViT delegated opaquely (see the module)."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.supported_architectures.llava import (
        LlavaArchitectureAdapter,
    )

    class InternVLArchitectureAdapter(LlavaArchitectureAdapter):
        """``InternVLForConditionalGeneration``: LLaVA's layout, an InternViT vision tower."""

        def __init__(self, cfg) -> None:
            super().__init__(cfg)
            self.component_mapping["vision_encoder"] = GeneralizedComponent(
                name="model.vision_tower"
            )

    return InternVLArchitectureAdapter


class InternVLFamily(LVLMFamily):
    name = "InternVL"
    architecture = "InternVLForConditionalGeneration"
    image_prompt = "<IMG_CONTEXT>"
    fixed_resolution = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(internvl_processor_class(), path)

    @classmethod
    def boot_bridge(cls, name: str, hf_model: torch.nn.Module, tokenizer):
        text = hf_model.config.text_config.model_type
        if text not in DENSE_TEXT_MODELS:
            raise NotImplementedError(
                f"{cls.name} with a {text!r} text model: tl-lvlm's InternVL adapter maps "
                f"dense Llama-style decoders ({', '.join(DENSE_TEXT_MODELS)}) only"
            )
        # The bridge selects its adapter by the HF class's name (see the base class).
        with adapter_registered(type(hf_model).__name__, internvl_adapter_class()):
            return super().boot_bridge(name, hf_model, tokenizer)

    # ----------------------------------------------------------------- prompts
    @classmethod
    def expand_image(cls, processor, n_image: int) -> str:
        return (
            f"{processor.start_image_token}{processor.image_token * n_image}"
            f"{processor.end_image_token}"
        )

    # ------------------------------------------------------------------ inputs
    @classmethod
    def tile_grid(cls, image_processor, height: int, width: int, n_tiles: int) -> tuple[int, int]:
        """``(rows, cols)`` of the tiles cut from a ``height x width`` image into ``n_tiles``
        tiles (thumbnail included): ``(1, 1)`` for one, else HF's own choice of canvas with
        the image processor's ``min_patches`` / ``max_patches``.

        Whether it tiled is read off ``n_tiles``: ``InternVLProcessor`` turns
        ``crop_to_patches`` on by default, whatever the image processor's own setting
        (``false`` in the public checkpoints' files).
        """
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            get_optimal_tiled_canvas,
        )

        if n_tiles == 1:
            return 1, 1
        ip = image_processor
        side = (ip.size["height"], ip.size["width"])
        cols, rows = get_optimal_tiled_canvas((height, width), side, ip.min_patches, ip.max_patches)
        return rows, cols

    @classmethod
    def process(cls, processor, images: Sequence, texts: Sequence[str]) -> Mapping[str, Tensor]:
        """The processor's outputs with ``pixel_values`` per row (``[batch, max tiles, 3, side,
        side]``) and ``tile_grid`` (``[batch, 2]``: tile rows and cols of each image).

        Raises:
            ValueError: the tile grids do not give the processor's tile and image-token
                counts (an image processor that tiles otherwise).
        """
        enc = dict(super().process(processor, images, texts))
        n_image = (enc["input_ids"] == processor.image_token_id).sum(-1)
        n_tiles = n_image // processor.image_seq_length
        grid = torch.tensor(
            [
                cls.tile_grid(processor.image_processor, im.height, im.width, int(n))
                for im, n in zip(images, n_tiles, strict=True)
            ]
        )
        n_grid = grid.prod(-1)
        counts = n_grid + (n_grid > 1)  # the thumbnail, when there are several tiles
        if not torch.equal(counts * processor.image_seq_length, n_image) or int(
            counts.sum()
        ) != len(enc["pixel_values"]):
            raise ValueError(
                f"{cls.name}: tile grids {grid.tolist()} give {counts.tolist()} tiles of "
                f"{processor.image_seq_length} tokens, but the processor made "
                f"{len(enc['pixel_values'])} tiles and {n_image.tolist()} image tokens"
            )
        rows = enc["pixel_values"].split(counts.tolist())
        packed = enc["pixel_values"].new_zeros(len(rows), int(counts.max()), *rows[0].shape[1:])
        for r, tiles in enumerate(rows):
            packed[r, : tiles.shape[0]] = tiles
        enc["pixel_values"] = packed
        enc["tile_grid"] = grid
        return enc

    def n_tiles(self, inputs: LVLMInputs) -> Int[Tensor, " batch"]:
        """Tiles of each row's image, thumbnail included."""
        n_grid = inputs.extra["tile_grid"].prod(-1)
        return n_grid + (n_grid > 1)

    def pixel_values(self, inputs: LVLMInputs) -> Float[Tensor, "tiles 3 side side"]:
        """The rows' tiles concatenated as the vision tower takes them."""
        counts = self.n_tiles(inputs).tolist()
        return torch.cat([inputs.pixel_values[r, :n] for r, n in enumerate(counts)])

    def model_kwargs(self, inputs: LVLMInputs) -> dict[str, Tensor]:
        # tile_grid is tl-lvlm's record of the tiling, not a model input.
        return {
            "pixel_values": self.pixel_values(inputs),
            "attention_mask": inputs.attention_mask,
            "position_ids": self.position_ids(inputs),
            **{k: v for k, v in inputs.extra.items() if k != "tile_grid"},
        }

    # ------------------------------------------------------------- model facts
    @property
    def image_size(self) -> int:
        """Side of one tile (448 on the public checkpoints)."""
        return int(self.config.vision_config.image_size[0])

    @property
    def tokens_per_side(self) -> int:
        """Image tokens along one side of a tile, after the pixel shuffle."""
        vision = self.config.vision_config
        patches = int(vision.image_size[0]) // int(vision.patch_size[0])
        return int(patches * self.config.downsample_ratio)

    # ---------------------------------------------------------- image geometry
    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The tiles' tokens placed on the resized image: a ``rows * g x cols * g`` grid over
        the whole image (``g`` = :attr:`tokens_per_side`); the thumbnail is left out."""
        self.require("image_attribution")
        g = self.tokens_per_side
        rows, cols = (int(x) for x in sample.extra["tile_grid"][0])
        n_image = sample.positions("image", 0).numel()
        if n_image != int(self.n_tiles(sample)[0]) * g * g:
            raise ValueError(
                f"{self.name}: a {rows} x {cols} tile grid does not give the prompt's "
                f"{n_image} image tokens"
            )
        # Token of grid cell (y, x): its tile's tokens, then its place in the tile.
        y, x = torch.meshgrid(torch.arange(rows * g), torch.arange(cols * g), indexing="ij")
        tokens = ((y // g) * cols + x // g) * g * g + (y % g) * g + x % g
        return PatchGeometry(rows * g, cols * g, "stretch", tokens=tuple(tokens.flatten().tolist()))
