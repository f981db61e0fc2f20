"""What the tiny family builders share: the shapes, a tokenizer with the family's special
tokens, text and CLIP-style vision configs, and the scaled random init."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

from tl_lvlm.zoo.tiny_llava import TinyLlavaConfig, build_tokenizer, scale_init

QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

# Chat templates in the format of the public checkpoints' templates (one turn of
# images then text; system turns and assistant history rendered as they do).


@dataclass
class TinyFamilyConfig(TinyLlavaConfig):
    """:class:`~tl_lvlm.zoo.tiny_llava.TinyLlavaConfig` with grouped-query attention by
    default (``n_kv_heads`` < ``n_heads``). Each family builder picks its own vision
    geometry: ``image_size`` / ``patch_size`` are read by the LLaVA-1.5 builder only."""

    n_kv_heads: int | None = 2


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
    base = build_tokenizer(cfg.bpe_vocab_size, [*QUESTIONS, *corpus])
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


def text_config(cls, cfg: TinyFamilyConfig, tokenizer, **kwargs):
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


def finish(model_cls, config, cfg: TinyFamilyConfig, tokenizer):
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)
    model = model_cls(config).eval()
    scale_init(model, cfg.init_scale)
    return model


def vision_config(config_cls, cfg: TinyFamilyConfig, image_size: int, patch_size: int, **kwargs):
    return config_cls(
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        **kwargs,
    )
