"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP, an average-pooling projector, Gemma 3.

Quirks: the image prompt is ``<start_of_image>``, which the processor expands with
newlines and begin/end markers; image tokens attend to each other both ways
(``token_type_ids`` marks them); q/k norms before RoPE; sliding-window layers with
their own (local) RoPE base; the image is resized to the SigLIP square without
cropping and pooled to ``mm_tokens_per_image`` tokens.
"""

from __future__ import annotations

import math

from jaxtyping import Int
from torch import Tensor

from tl_lvlm.families.base import LVLMFamily, _unwrapped
from tl_lvlm.families.geometry import PatchGeometry
from tl_lvlm.inputs import LVLMInputs


class Gemma3Family(LVLMFamily):
    name = "Gemma 3"
    architecture = "Gemma3ForConditionalGeneration"
    image_prompt = "<start_of_image>"
    bidirectional_image = True
    nested_images = True
    sequence_inputs = ("token_type_ids",)

    @classmethod
    def expand_image(cls, processor, n_image: int) -> str:
        # Gemma3Processor's ``full_image_sequence``: newlines and BOI/EOI markers around.
        tok = processor.tokenizer
        return f"\n\n{tok.boi_token}{tok.image_token * n_image}{tok.eoi_token}\n\n"

    def key_hook(self, layer: int) -> tuple[str, int]:
        # Gemma 3 normalizes keys (k_norm) before RoPE.
        return f"blocks.{layer}.attn.hook_k_normed", 2

    def rotations(self, x: Tensor, position_ids: Int[Tensor, "... batch n"]):
        # One rotary embedding per layer type: local RoPE base for sliding layers.
        rotary = _unwrapped(self.decoder.rotary_emb)
        return [rotary(x, position_ids, t) for t in self.decoder_config.layer_types]

    def patch_geometry(self, processor, sample: LVLMInputs) -> PatchGeometry:
        """The pooled SigLIP grid over the whole image (resized to the square, not cropped)."""
        self.require("image_attribution")
        n_image = int(self.config.mm_tokens_per_image)
        grid = math.isqrt(n_image)
        if grid * grid != n_image or sample.positions("image", 0).numel() != n_image:
            raise ValueError(f"{self.name}: {n_image} image tokens do not form a square grid")
        if getattr(processor.image_processor, "do_pan_and_scan", False):
            raise NotImplementedError(
                f"{self.name}: the processor has pan-and-scan on, which adds crops of the image "
                "with their own tokens; image-token maps need do_pan_and_scan=False"
            )
        return PatchGeometry(grid, grid, "stretch")
