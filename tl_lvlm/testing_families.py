"""Tiny random checkpoints of the LVLM families beyond LLaVA-1.5, for tests.

Each builder returns a complete Hugging Face model and its real processor
(PIL-backend image processor, so no torchvision), with a chat template in the
format of the family's public checkpoints; :func:`save_tiny_family` writes them
with ``save_pretrained`` so tests load them through
``HookedLVLM.from_pretrained(path)`` like a hub checkpoint.

Tokenizers come from :func:`tl_lvlm.testing.build_tokenizer` (byte-level BPE)
with the family's special tokens added, so that image and turn markers are
single tokens as in the real vocabularies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from tl_lvlm.testing import (
    TinyLlavaConfig,
    build_tiny_llava,
    build_tokenizer,
    save_atomic,
    scale_init,
)

#: Questions the tiny tokenizers learn merges for (any other text still tokenizes).
_QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

# Chat templates in the format of the public checkpoints' templates (one turn of
# images then text; system turns and assistant history rendered as they do).
_MISTRAL_INST_CHAT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for c in message['content'] if c['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% for c in message['content'] if c['type'] == 'text' %}{{ ' ' + c['text'] }}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass
class TinyFamilyConfig:
    """Shapes shared by the tiny family builders (each picks its own vision geometry).

    ``n_kv_heads`` < ``n_heads`` gives grouped-query attention.
    """

    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_model: int = 64
    d_mlp: int = 128
    vision_layers: int = 1
    vision_d_model: int = 32
    vision_heads: int = 2
    bpe_vocab_size: int = 400
    max_position_embeddings: int = 2048
    seed: int = 0
    init_scale: float = 4.0


def family_tokenizer(
    cfg: TinyFamilyConfig,
    *,
    specials: list[str],
    named: dict[str, str] | None = None,
    bos: bool = True,
    corpus: list[str] = (),
) -> PreTrainedTokenizerFast:
    """:func:`~tl_lvlm.testing.build_tokenizer` plus ``specials`` as special tokens.

    Args:
        specials: tokens that must never be split (image and turn markers).
        named: processor-facing names of special tokens, e.g. ``{"boi_token": ...}``
            (``image_token`` defaults to ``<image>``).
        bos: prepend BOS as Llama/Gemma tokenizers do; False for Qwen-style ones, which
            have no BOS token at all.
        corpus: extra text the BPE merges are learned from.
    """
    base = build_tokenizer(cfg.bpe_vocab_size, [*_QUESTIONS, *corpus])
    backend = base.backend_tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if not bos:
        backend.post_processor = None
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", **(named or {})},
        padding_side="left",
    )


def _text_config(cls, cfg: TinyFamilyConfig, tokenizer, **kwargs):
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **kwargs,
    )


def _finish(model_cls, config, cfg: TinyFamilyConfig, tokenizer):
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)
    model = model_cls(config).eval()
    scale_init(model, cfg.init_scale)
    return model


# ------------------------------------------------------------------ LLaVA-NeXT
#: Tile side of the tiny LLaVA-NeXT (the CLIP tower's input) and its patch size:
#: 16 features per tile; high-resolution grids of up to 2 x 2 tiles.
NEXT_TILE, NEXT_PATCH = 28, 7
NEXT_PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def build_tiny_llava_next(cfg: TinyFamilyConfig | None = None):
    """A tiny ``LlavaNextForConditionalGeneration`` (CLIP + Llama) and ``LlavaNextProcessor``.

    Dynamic tiling is real: the image is split into tiles on one of
    :data:`NEXT_PINPOINTS`, so the number of image tokens depends on its size.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(cfg, specials=[], corpus=["[INST] [/INST]"])
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": NEXT_TILE},
        crop_size={"height": NEXT_TILE, "width": NEXT_TILE},
        image_grid_pinpoints=NEXT_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=NEXT_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_MISTRAL_INST_CHAT,
    )
    config = LlavaNextConfig(
        vision_config=_clip(CLIPVisionConfig, cfg, NEXT_TILE, NEXT_PATCH),
        text_config=_text_config(LlamaConfig, cfg, tokenizer),
        image_token_id=tokenizer.image_token_id,
        image_grid_pinpoints=NEXT_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        architectures=["LlavaNextForConditionalGeneration"],
    )
    return _finish(LlavaNextForConditionalGeneration, config, cfg, tokenizer), processor


def _clip(config_cls, cfg: TinyFamilyConfig, image_size: int, patch_size: int, **kwargs):
    return config_cls(
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        **kwargs,
    )


# ---------------------------------------------------------------------- Gemma 3
#: The tiny Gemma 3's SigLIP input side and patch size (8 x 8 patches), and its
#: image tokens: the projector average-pools the patches to 4 x 4, as the real
#: one pools 64 x 64 to 16 x 16.
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_IMAGE_TOKENS = 56, 7, 16
GEMMA3_SPECIALS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
_GEMMA3_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' }}"
    "{{ ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_tiny_gemma3(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Gemma3ForConditionalGeneration`` (SigLIP + Gemma 3 text) and ``Gemma3Processor``.

    Its two decoder layers are one sliding-window (local RoPE base) and one global
    layer, with Gemma 3's q/k norms; image tokens attend to each other both ways.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=[*GEMMA3_SPECIALS.values(), "<start_of_turn>", "<end_of_turn>"],
        named=GEMMA3_SPECIALS,
        corpus=["<start_of_turn>user\n<start_of_image><end_of_turn>\n<start_of_turn>model\n"],
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=GEMMA3_IMAGE_TOKENS,
        chat_template=_GEMMA3_CHAT,
    )
    d_head = cfg.d_model // cfg.n_heads
    text = _text_config(
        Gemma3TextConfig,
        cfg,
        tokenizer,
        head_dim=d_head,
        query_pre_attn_scalar=d_head,
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.n_layers)
        ],
        sliding_window=512,
    )
    config = Gemma3Config(
        vision_config=_clip(SiglipVisionConfig, cfg, GEMMA3_IMAGE, GEMMA3_PATCH),
        text_config=text,
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        architectures=["Gemma3ForConditionalGeneration"],
    )
    model = _finish(Gemma3ForConditionalGeneration, config, cfg, tokenizer)
    with torch.no_grad():
        # Gemma 3 initializes the image projection to zeros, which would hide the
        # image from the language model; give it random weights like the others.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(
            std=0.02 * cfg.init_scale
        )
    return model, processor


# ------------------------------------------------------------------ Qwen2.5-VL
#: The tiny Qwen2.5-VL's vision patch side and merge size: the processor resizes an
#: image (keeping its aspect) to multiples of 4 * 2 = 8 pixels, and each 2 x 2 block of
#: 4-pixel patches becomes one image token (a 28 x 28 image -> 32 x 32 -> 4 x 4 tokens).
QWEN_PATCH, QWEN_MERGE = 4, 2
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
QWEN_IMAGE_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
# Qwen2.5-VL-Instruct's chat template (system turn by default, vision markers around
# the image pad).
_QWEN2_5_VL_CHAT = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] + '<|im_end|>\n' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_qwen2_5_vl(cfg: TinyFamilyConfig | None = None):
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` and its ``Qwen2_5_VLProcessor``.

    The processor is the real one with the PIL image processor and no video processor
    (:func:`tl_lvlm.families.processors.qwen2_5_vl_processor`); it saves as a
    ``Qwen2_5_VLProcessor``, as the public checkpoints do. The vision tower has two
    blocks, one with window attention and one global; the decoder uses M-RoPE.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
        Qwen2VLImageProcessorPil,
    )

    from tl_lvlm.families.processors import qwen2_5_vl_processor

    # Seed 1: a random model whose answers to the test images rise with the image heads
    # (clean above all-ablated), so head attribution keeps samples to fit.
    cfg = cfg or TinyFamilyConfig(seed=1)
    tokenizer = family_tokenizer(
        cfg,
        specials=[*QWEN_SPECIALS, *QWEN_IMAGE_TOKENS.values()],
        named=QWEN_IMAGE_TOKENS,
        bos=False,
        corpus=[
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
        ],
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH,
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        min_pixels=(QWEN_PATCH * QWEN_MERGE) ** 2 * 4,
        max_pixels=64 * 64,
    )
    processor = qwen2_5_vl_processor(image_processor, tokenizer, _QWEN2_5_VL_CHAT)
    d_head = cfg.d_model // cfg.n_heads
    # M-RoPE splits the d_head / 2 rotary frequencies into (temporal, height, width).
    mrope = [d_head // 2 - 2 * (d_head // 6), d_head // 6, d_head // 6]
    text = _text_config(
        Qwen2_5_VLTextConfig,
        cfg,
        tokenizer,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    vision = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_heads=cfg.vision_heads,
        patch_size=QWEN_PATCH,
        spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        # Windows of 2 x 2 merged tokens in block 0; block 1 attends globally.
        window_size=2 * QWEN_PATCH * QWEN_MERGE,
        fullatt_block_indexes=[1],
        out_hidden_size=cfg.d_model,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
    return _finish(Qwen2_5_VLForConditionalGeneration, config, cfg, tokenizer), processor


# ------------------------------------------------------------- LLaVA-OneVision
#: The tiny OneVision's SigLIP input side and patch size (4 x 4 = 16 tokens for the
#: base image and per tile), and its anyres grids of up to 2 x 2 tiles.
OV_TILE, OV_PATCH = 28, 7
OV_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
# llava-onevision-qwen2-*-ov-hf's chat template: images first, then "\n" + text.
_ONEVISION_CHAT = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llava_onevision(cfg: TinyFamilyConfig | None = None):
    """A tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP + Qwen2) and its processor.

    The processor is the real ``LlavaOnevisionProcessor`` with the PIL image processor
    and no video processor (:func:`tl_lvlm.families.processors.llava_onevision_processor`).
    Anyres tiling is real: a base image plus tiles on one of :data:`OV_PINPOINTS`,
    unpadded, with a newline token after each row of tile features.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from tl_lvlm.families.processors import llava_onevision_processor

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        named={"video_token": "<video>"},
        bos=False,
        corpus=["<|im_start|>user <image>\n<|im_end|><|im_start|>assistant\n"],
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": OV_TILE, "width": OV_TILE}, image_grid_pinpoints=OV_PINPOINTS
    )
    processor = llava_onevision_processor(
        image_processor,
        tokenizer,
        _ONEVISION_CHAT,
        num_image_tokens=(OV_TILE // OV_PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    config = LlavaOnevisionConfig(
        vision_config=_clip(SiglipVisionConfig, cfg, OV_TILE, OV_PATCH),
        text_config=_text_config(Qwen2Config, cfg, tokenizer),
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=OV_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        architectures=["LlavaOnevisionForConditionalGeneration"],
    )
    return _finish(LlavaOnevisionForConditionalGeneration, config, cfg, tokenizer), processor


# ------------------------------------------------------------------ LLaVA-1.5
def build_tiny_llava_15(cfg: TinyFamilyConfig | None = None):
    """:func:`tl_lvlm.testing.build_tiny_llava` with the shared shapes (28 x 28 CLIP input,
    16 image tokens, grouped-query attention)."""
    cfg = cfg or TinyFamilyConfig()
    return build_tiny_llava(
        TinyLlavaConfig(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp,
            vision_layers=cfg.vision_layers,
            vision_d_model=cfg.vision_d_model,
            vision_heads=cfg.vision_heads,
            bpe_vocab_size=cfg.bpe_vocab_size,
            max_position_embeddings=cfg.max_position_embeddings,
            seed=cfg.seed,
            init_scale=cfg.init_scale,
        )
    )


#: Family name -> builder of ``(hf_model, processor)``.
BUILDERS: dict[str, Callable] = {
    "llava": build_tiny_llava_15,
    "llava_next": build_tiny_llava_next,
    "gemma3": build_tiny_gemma3,
    "llava_onevision": build_tiny_llava_onevision,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
}


def save_tiny_family(
    family: str, path: str | os.PathLike, config: TinyFamilyConfig | None = None
) -> Path:
    """Build the tiny ``family`` checkpoint (see :data:`BUILDERS`) and save it at ``path``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(BUILDERS)}")
    return save_atomic(path, *BUILDERS[family](config))
