"""Qwen3.5 (``Qwen3_5ForConditionalGeneration``): a hybrid decoder whose layers are either
gated linear attention (``"linear_attention"``, Gated DeltaNet: a recurrent state, no softmax
over positions) or gated softmax attention (``"full_attention"``), after Qwen3-VL's vision
tower (learned, interpolated position embeddings) and patch merger.

What tl-lvlm reads is Qwen2.5-VL's (:class:`~tl_lvlm.families.qwen2_5_vl.Qwen2_5_VLFamily`):
the image prompt and pad expansion, per-row ``pixel_values``, M-RoPE positions from HF's
``get_rope_index`` (same signature), the cut of incremental positions while generating.
Loading, logits and greedy generation work (equal to HF's). Image-K/V head ablation (and so
the engine, head attribution and image-token attribution) is refused by the generic check
(:meth:`~tl_lvlm.families.base.LVLMFamily.refusals`), naming the linear-attention layers read
from the decoder config's ``layer_types``: a linear-attention layer has no softmax head whose
image keys and values could be replaced. Knockout is refused too: the bridge keeps the
attention native, and recomputing Qwen3.5's gated softmax attention is not implemented.

The processor is ``Qwen3VLProcessor`` (without its video processor where torchvision is
missing), and TransformerLens's own ``Qwen3_5MultimodalArchitectureAdapter`` is booted
(without its torchvision check where torchvision is missing, as for Qwen2.5-VL).
"""

from __future__ import annotations

from pathlib import Path

from tl_lvlm.families.processors import (
    load_image_processor_only,
    qwen3_vl_processor_class,
    torchvision_available,
)
from tl_lvlm.families.qwen2_5_vl import Qwen2_5_VLFamily, adapter_without_torchvision_check


class Qwen3_5Family(Qwen2_5_VLFamily):
    name = "Qwen3.5"
    architecture = "Qwen3_5ForConditionalGeneration"
    refused_analyses = {
        "knockout": (
            "its softmax layers gate each head's output by a sigmoid of a second query "
            "projection (q_proj is twice as wide) after q/k norms, which tl-lvlm's recomputed "
            "attention (the knockout hooks of a native-attention bridge) does not apply"
        )
    }

    @classmethod
    def load_processor(cls, path: str | Path):
        return load_image_processor_only(qwen3_vl_processor_class(), path)

    @classmethod
    def bridge_adapter(cls) -> type | None:
        """TransformerLens's Qwen3.5 multimodal adapter, minus the torchvision check where
        torchvision is missing."""
        if torchvision_available():
            return None
        from transformer_lens.model_bridge.supported_architectures.qwen3_5_multimodal import (
            Qwen3_5MultimodalArchitectureAdapter,
        )

        return adapter_without_torchvision_check(Qwen3_5MultimodalArchitectureAdapter)
