"""Tiny Gemma 3: pooled SigLIP image, Gemma chat turns."""

from __future__ import annotations

import torch

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
    vision_config,
)

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
    text = text_config(
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
        vision_config=vision_config(SiglipVisionConfig, cfg, GEMMA3_IMAGE, GEMMA3_PATCH),
        text_config=text,
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        architectures=["Gemma3ForConditionalGeneration"],
    )
    model = finish(Gemma3ForConditionalGeneration, config, cfg, tokenizer)
    with torch.no_grad():
        # Gemma 3 initializes the image projection to zeros, which would hide the
        # image from the language model; give it random weights like the others.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(
            std=0.02 * cfg.init_scale
        )
    return model, processor
