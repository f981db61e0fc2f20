"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): a windowed ViT, a 2 x 2 patch merger,
a Qwen2 decoder with M-RoPE.

Quirks:

- the image prompt is ``<|vision_start|><|image_pad|><|vision_end|>``; the processor
  repeats the pad once per merged patch (``prod(image_grid_thw) / merge_size**2``);
- the image is resized, keeping its aspect, to multiples of ``patch * merge`` pixels
  (no crop), so the image tokens are a ``grid_h / 2 x grid_w / 2`` grid over the whole
  image, row by row;
- ``pixel_values`` are the patches of the whole batch in one ``[sum of patches, d]``
  tensor; :meth:`process` keeps them per row (``[batch, max patches, d]``, zero-padded)
  so that rows can be selected, and :meth:`model_kwargs` concatenates them back;
- position ids are 3-D (M-RoPE: temporal, height, width): text tokens count up, image
  tokens take their grid row and column from the image's start, and the text after the
  image continues from the largest image position (HF's ``get_rope_index``; the engine
  cuts the same ids for its prefix and suffix runs);
- TransformerBridge keeps the text attention native, so ``hook_attn_scores`` edits are
  discarded: the hook reference and knockout recompute attention from ``hook_q/k/v``
  (:mod:`tl_lvlm.ablation.recomputed`);
- TransformerLens's adapter declares ``required_libraries = ["torchvision"]``, which
  neither the model nor the bridge uses; without torchvision the bridge is booted with
  that one check left out, and the processor is built without its video processor
  (:mod:`tl_lvlm.families.processors`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from tl_lvlm.families.base import LVLMFamily, adapter_registered
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.families.processors import (
    load_image_processor_only,
    qwen2_5_vl_processor_class,
    torchvision_available,
)
from tl_lvlm.inputs import LVLMInputs


@functools.cache
def adapter_without_torchvision_check(adapter: type | None = None) -> type:
    """TransformerLens's ``adapter`` (default its Qwen2.5-VL adapter) minus its torchvision
    check."""
    if adapter is None:
        from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import (
            Qwen2_5_VLArchitectureAdapter as adapter,
        )

    # The adapter's component mapping and config are untouched; torchvision is only
    # listed, never imported, by the adapter, the bridge and the model.
    return type(f"{adapter.__name__}NoTorchvision", (adapter,), {"required_libraries": []})


class Qwen2_5_VLFamily(LVLMFamily):
    name = "Qwen2.5-VL"
    architecture = "Qwen2_5_VLForConditionalGeneration"
    image_prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    fixed_resolution = False
    sequence_inputs = ("mm_token_type_ids",)
    attention_edits = "recompute"  # the bridge keeps Qwen's M-RoPE attention native

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(qwen2_5_vl_processor_class(), path)

    @classmethod
    def bridge_adapter(cls) -> type | None:
        """The TransformerLens adapter registered for the boot, or None for TransformerLens's
        own: the one it registers for :attr:`architecture`, minus the torchvision check where
        torchvision is missing."""
        if torchvision_available():
            return None
        from importlib.metadata import version

        from transformer_lens.factories.architecture_adapter_factory import (
            ArchitectureAdapterFactory,
        )

        adapter = ArchitectureAdapterFactory._adapters.get(cls.architecture)
        if adapter is None:
            raise NotImplementedError(
                f"TransformerLens {version('transformer-lens')} has no adapter for "
                f"{cls.architecture}"
            )
        return adapter_without_torchvision_check(adapter)

    @classmethod
    def boot_bridge(cls, name: str, hf_model: torch.nn.Module, tokenizer):
        adapter = cls.bridge_adapter()
        if adapter is None:
            return super().boot_bridge(name, hf_model, tokenizer)
        # The bridge selects its adapter by the HF class's name (see the base class).
        with adapter_registered(type(hf_model).__name__, adapter):
            return super().boot_bridge(name, hf_model, tokenizer)

    # ----------------------------------------------------------------- inputs
    @classmethod
    def process(cls, processor, images: Sequence, texts: Sequence[str]) -> Mapping[str, Tensor]:
        """The processor's outputs with ``pixel_values`` per row: ``[batch, max patches, d]``."""
        enc = dict(super().process(processor, images, texts))
        counts = enc["image_grid_thw"].prod(-1).tolist()
        rows = enc["pixel_values"].split(counts)
        packed = enc["pixel_values"].new_zeros(len(rows), max(counts), rows[0].shape[-1])
        for r, patches in enumerate(rows):
            packed[r, : patches.shape[0]] = patches
        enc["pixel_values"] = packed
        return enc

    def pixel_values(self, inputs: LVLMInputs) -> Tensor:
        """The rows' patches concatenated as the vision tower takes them: ``[sum patches, d]``."""
        counts = inputs.extra["image_grid_thw"].prod(-1).tolist()
        return torch.cat([inputs.pixel_values[r, :n] for r, n in enumerate(counts)])

    def position_ids(self, inputs: LVLMInputs) -> Int[Tensor, "3 batch pos"]:
        """M-RoPE position ids ``[3, batch, pos]`` (HF's ``get_rope_index``; 0 at padding)."""
        positions, _ = self.hf_model.model.get_rope_index(
            inputs.input_ids,
            mm_token_type_ids=inputs.extra["mm_token_type_ids"],
            image_grid_thw=inputs.extra["image_grid_thw"],
            attention_mask=inputs.attention_mask,
        )
        return positions

    def model_kwargs(self, inputs: LVLMInputs) -> dict[str, Tensor]:
        return {
            **inputs.extra,
            "pixel_values": self.pixel_values(inputs),
            "attention_mask": inputs.attention_mask,
            "position_ids": self.position_ids(inputs),
        }

    @property
    def image_size(self) -> int:
        """Qwen2.5-VL takes images of any size; this is the side of a square of 16 x 16 merged
        patches (448 pixels on the public checkpoints), for where a default size is needed
        (random images)."""
        vision = self.config.vision_config
        return 16 * int(vision.patch_size) * int(vision.spatial_merge_size)

    # ---------------------------------------------------------- image geometry
    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The merged-patch grid of the resized image (aspect kept, not cropped)."""
        self.require("image_attribution")
        merge = int(self.config.vision_config.spatial_merge_size)
        t, h, w = (int(x) for x in sample.extra["image_grid_thw"][0])
        geometry = PatchGeometry(h // merge, w // merge, "stretch")
        if t != 1 or geometry.n_tokens != sample.positions("image", 0).numel():
            raise ValueError(
                f"{self.name}: image_grid_thw {(t, h, w)} does not give the "
                f"{sample.positions('image', 0).numel()} image tokens of the prompt"
            )
        return geometry
