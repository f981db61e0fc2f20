"""Tiny Gemma 4: patch-embedded vision encoder with 3 x 3 pooling, Gemma 4 text, Gemma 4 turns."""

from __future__ import annotations

import torch

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
)

#: The tiny Gemma 4's vision patch side and pooling kernel. The processor resizes an image,
#: keeping its aspect, to at most ``GEMMA4_SOFT_TOKENS * 3**2`` patches with sides that are
#: multiples of 2 * 3 = 6 pixels; each 3 x 3 block of patches becomes one image token
#: (a 28 x 28 image -> 48 x 48 pixels -> 24 x 24 patches -> 8 x 8 = 64 image tokens).
GEMMA4_PATCH, GEMMA4_POOL = 2, 3
#: The smallest soft-token budget the Gemma 4 image processor accepts (70, 140, 280, ...).
GEMMA4_SOFT_TOKENS = 70
GEMMA4_SPECIALS = {
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    # Gemma4Processor checks for the audio markers whether or not audio is passed.
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}
# Gemma 4's chat turns: ``<|turn>{role}\n ... <turn|>\n``; the model's role is "model".
_GEMMA4_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|turn>' }}"
    "{{ ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<turn|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}"
)


def build_tiny_gemma4(
    cfg: TinyFamilyConfig | None = None,
    *,
    per_layer_inputs: bool = False,
    kv_shared_layers: int = 0,
    global_head_dim: int | None = None,
    keys_as_values: bool = False,
    bidirectional_vision: bool = False,
):
    """A tiny ``Gemma4ForConditionalGeneration`` and its ``Gemma4Processor`` (images only).

    The decoder alternates sliding-window and full-attention layers (the last one full),
    with Gemma 4's q/k/v norms, attention scale 1, proportional RoPE on full layers and
    soft-capped final logits.
    By default it has none of the variants tl-lvlm refuses to ablate; each keyword turns
    one on, as on the public checkpoints:

    Args:
        per_layer_inputs: Per-Layer Embeddings (E2B / E4B), 8 dimensions per layer.
        kv_shared_layers: the last this many layers reuse earlier layers' K/V (E2B / E4B;
            HF's Gemma 4 runs it with per-layer inputs only).
        global_head_dim: the full-attention layers' head dim (512 against 256 on the
            public checkpoints); None = the sliding layers' head dim.
        keys_as_values: full-attention layers use their key projection for the values too
            (``attention_k_eq_v``, the larger checkpoints).
        bidirectional_vision: image tokens attend to each other both ways in the sliding
            layers (``use_bidirectional_attention="vision"``, the larger checkpoints).
    """
    from transformers import (
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessorPil,
        Gemma4TextConfig,
        Gemma4VisionConfig,
    )

    from tl_lvlm.families.processors import gemma4_processor_class

    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=[*GEMMA4_SPECIALS.values(), "<|turn>", "<turn|>"],
        named=GEMMA4_SPECIALS,
        corpus=["<|turn>user\n<|image|><turn|>\n<|turn>model\n"],
    )
    image_processor = Gemma4ImageProcessorPil(
        patch_size=GEMMA4_PATCH,
        pooling_kernel_size=GEMMA4_POOL,
        max_soft_tokens=GEMMA4_SOFT_TOKENS,
    )
    processor = gemma4_processor_class()(
        image_processor, tokenizer, chat_template=_GEMMA4_CHAT, image_seq_length=GEMMA4_SOFT_TOKENS
    )
    d_head = cfg.d_model // cfg.n_heads
    text = text_config(
        Gemma4TextConfig,
        cfg,
        tokenizer,
        head_dim=d_head,
        global_head_dim=global_head_dim or d_head,
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.n_layers)
        ],
        sliding_window=512,
        hidden_size_per_layer_input=8 if per_layer_inputs else 0,
        vocab_size_per_layer_input=len(tokenizer),
        num_kv_shared_layers=kv_shared_layers,
        attention_k_eq_v=keys_as_values,
        use_bidirectional_attention="vision" if bidirectional_vision else None,
        # 30 on the public checkpoints; 2 moves the tiny model's logits (about 1) visibly.
        final_logit_softcapping=2.0,
    )
    vision = Gemma4VisionConfig(
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        num_key_value_heads=cfg.vision_heads,
        head_dim=cfg.vision_d_model // cfg.vision_heads,
        patch_size=GEMMA4_PATCH,
        pooling_kernel_size=GEMMA4_POOL,
        position_embedding_size=64,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        boi_token_id=ids(GEMMA4_SPECIALS["boi_token"]),
        eoi_token_id=ids(GEMMA4_SPECIALS["eoi_token"]),
        image_token_id=ids(GEMMA4_SPECIALS["image_token"]),
        audio_token_id=ids(GEMMA4_SPECIALS["audio_token"]),
        video_token_id=ids("<|video|>"),
        architectures=["Gemma4ForConditionalGeneration"],
    )
    model = finish(Gemma4ForConditionalGeneration, config, cfg, tokenizer)
    with torch.no_grad():
        # Gemma 4 initializes its vision position table to ones (every patch at the same
        # place); random rows make the image tokens differ by position.
        table = model.model.vision_tower.patch_embedder.position_embedding_table
        table.normal_(std=0.02 * cfg.init_scale)
    return model, processor
