"""Tiny InternVL-3: InternViT tiles, pixel shuffle, a Qwen2 decoder, ChatML."""

from __future__ import annotations

from tl_lvlm.testing._tiny import (
    TinyFamilyConfig,
    family_tokenizer,
    finish,
    text_config,
)

#: The tiny InternVL's tile side and vision patch size: each 32 x 32 tile is 8 x 8 patches,
#: which the 0.5 pixel shuffle turns into 4 x 4 = 16 image tokens. The processor tiles an
#: image on a grid of 1 to :data:`INTERNVL_MAX_TILES` tiles (plus a thumbnail when there are
#: several), e.g. a 28 x 56 image -> 1 x 2 tiles + thumbnail = 48 image tokens.
INTERNVL_TILE, INTERNVL_PATCH, INTERNVL_MAX_TILES = 32, 4, 4
INTERNVL_SPECIALS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
INTERNVL_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# OpenGVLab/InternVL3-*-hf's chat template: ChatML, each image as "<IMG_CONTEXT>\n" before
# the text (the processor expands it to <img>, the tiles' context tokens, </img>).
_INTERNVL_CHAT = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_internvl(cfg: TinyFamilyConfig | None = None, *, text: str = "qwen2"):
    """A tiny ``InternVLForConditionalGeneration`` (InternViT + Qwen2) and its processor.

    The processor is the real ``InternVLProcessor`` with the PIL ``GotOcr2ImageProcessorPil``
    (tiles cropped from the resized image, plus a thumbnail) and no video processor
    (:func:`tl_lvlm.families.internvl.internvl_processor`); it saves as an
    ``InternVLProcessor``, as the public checkpoints do.

    Args:
        text: the decoder: ``"qwen2"`` (InternVL-3) or ``"qwen3"`` (InternVL-3.5: q/k norms,
            and the unembedding tied to the embeddings as on the small public checkpoints).
    """
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        Qwen2Config,
        Qwen3Config,
    )

    from tl_lvlm.families.internvl import internvl_processor

    if text not in ("qwen2", "qwen3"):
        raise ValueError(f"text must be 'qwen2' or 'qwen3', got {text!r}")
    cfg = cfg or TinyFamilyConfig()
    tokenizer = family_tokenizer(
        cfg,
        specials=INTERNVL_SPECIALS,
        named=INTERNVL_IMAGE_TOKENS,
        bos=False,
        corpus=["<|im_start|>user\n<img><IMG_CONTEXT></img>\n<|im_end|>\n<|im_start|>assistant\n"],
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=INTERNVL_MAX_TILES,
    )
    downsample = 0.5
    image_seq_length = int((INTERNVL_TILE // INTERNVL_PATCH * downsample) ** 2)
    processor = internvl_processor(image_processor, tokenizer, _INTERNVL_CHAT, image_seq_length)
    vision = InternVLVisionConfig(
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=INTERNVL_TILE,
        patch_size=INTERNVL_PATCH,
    )
    tied = text == "qwen3"
    if tied:
        decoder = text_config(Qwen3Config, cfg, tokenizer, head_dim=cfg.d_model // cfg.n_heads)
        decoder.tie_word_embeddings = True
    else:
        decoder = text_config(Qwen2Config, cfg, tokenizer)
    config = InternVLConfig(
        vision_config=vision,
        text_config=decoder,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tied,
        architectures=["InternVLForConditionalGeneration"],
    )
    return finish(InternVLForConditionalGeneration, config, cfg, tokenizer), processor


def build_tiny_internvl3_5(cfg: TinyFamilyConfig | None = None):
    """:func:`build_tiny_internvl` with InternVL-3.5's Qwen3 decoder (q/k norms, tied
    unembedding)."""
    return build_tiny_internvl(cfg, text="qwen3")
