"""Tiny LLaVA models built from configs: the zoo trains one, tests and benchmarks build random ones.

No pretrained LVLM weights can be downloaded on the machines this project is
developed on, so every test builds a small but *complete* LLaVA: a CLIP vision
tower, the two-layer projector, a Llama decoder, a real byte-level BPE tokenizer
(built with ``tokenizers``) and a real ``LlavaProcessor`` with a
``CLIPImageProcessor``. :func:`save_tiny_llava` writes it with
``save_pretrained`` so tests load it through ``HookedLVLM.from_pretrained(path)``,
the same code path a user takes with a hub name.

The image span is configurable: ``image_size // patch_size`` squared tokens, so
``image_size=48, patch_size=2`` gives LLaVA-1.5's 576 image tokens.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from tl_lvlm.inputs.templates import (
    CHATML_TEMPLATE,
    IMAGE_PLACEHOLDER,
    LLAVA_15_TEMPLATE,
    VICUNA_SYSTEM_TEMPLATE,
)
from tl_lvlm.zoo.questions import DIGIT_WORDS

IMAGE_TOKEN = IMAGE_PLACEHOLDER
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]


# Text the BPE merges are learned from: the templates and the questions used in
# tests and demos, so common words become single tokens. Any other text still
# tokenizes (byte-level), just into more pieces.
_CORPUS = [
    LLAVA_15_TEMPLATE,
    VICUNA_SYSTEM_TEMPLATE,
    CHATML_TEMPLATE,
    "What is the main object in this image? Answer in a single word.",
    "What digit is shown? Answer in a single word.",
    "Which number is written here? Answer in a single word.",
    "Describe the image. What color is it? How many objects are there?",
    " ".join(DIGIT_WORDS),
    "USER: ASSISTANT: the a an is of in on this that image picture photo",
]


@dataclass
class TinyLlavaConfig:
    """Shapes of a tiny random LLaVA. Defaults run a forward pass in milliseconds.

    ``n_kv_heads`` < ``n_heads`` gives grouped-query attention. The number of image
    tokens is ``(image_size // patch_size) ** 2`` (CLS dropped, LLaVA's ``"default"``
    feature selection).
    """

    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_model: int = 64
    d_mlp: int = 128
    image_size: int = 28
    patch_size: int = 7
    vision_layers: int = 1
    vision_d_model: int = 32
    vision_heads: int = 2
    bpe_vocab_size: int = 400
    max_position_embeddings: int = 2048
    seed: int = 0
    #: Multiplies the random init of every matrix but the embeddings. The
    #: default std of 0.02 gives near-uniform logits that ablations barely move;
    #: use 1.0 before training.
    init_scale: float = 4.0
    corpus: list[str] = field(default_factory=list)

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tokenizer(vocab_size: int = 400, extra_corpus: list[str] | None = None):
    """A Llama-style fast tokenizer: byte-level BPE, BOS prepended, ``<image>`` special.

    Training the merges on a fixed corpus is deterministic, so two calls give the
    same vocabulary.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS + list(extra_corpus or []), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        # Says what the post-processor does; without it TransformerLens re-loads
        # the tokenizer by name to get a BOS-prepending one.
        add_bos_token=True,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


def build_processor(tokenizer, image_size: int, patch_size: int) -> LlavaProcessor:
    """A real ``LlavaProcessor`` whose image processor resizes to ``image_size``."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_tiny_llava(
    config: TinyLlavaConfig | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a randomly initialised tiny LLaVA and its processor (eval mode, fp32)."""
    cfg = config or TinyLlavaConfig()
    if cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"image_size={cfg.image_size} must be a multiple of patch_size={cfg.patch_size}"
        )
    n_kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.n_heads % n_kv:
        raise ValueError(f"n_heads={cfg.n_heads} must be a multiple of n_kv_heads={n_kv}")
    tokenizer = build_tokenizer(cfg.bpe_vocab_size, cfg.corpus)
    vocab_size = len(tokenizer)
    if vocab_size == cfg.d_model:
        # The bridge's compatibility mode mistakes a square unembedding for a
        # transposed one; keep them apart.
        raise ValueError("vocab size equals d_model; change d_model or bpe_vocab_size")
    processor = build_processor(tokenizer, cfg.image_size, cfg.patch_size)

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_d_model,
        intermediate_size=cfg.vision_d_model * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_d_model,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    llava_cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=cfg.n_image_tokens,
        vision_feature_layer=-2 if cfg.vision_layers > 1 else -1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        architectures=["LlavaForConditionalGeneration"],
    )
    llava_cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(llava_cfg).eval()
    scale_init(model, cfg.init_scale)
    return model, processor


def scale_init(model: torch.nn.Module, scale: float) -> None:
    """Multiply every weight matrix but the embeddings by ``scale`` (see ``init_scale``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(scale)


def save_tiny_llava(path: str | os.PathLike, config: TinyLlavaConfig | None = None) -> Path:
    """Build a tiny LLaVA and write model + processor with ``save_pretrained`` (atomically)."""
    return save_atomic(path, *build_tiny_llava(config))


def save_atomic(path: str | os.PathLike, model, processor) -> Path:
    """``save_pretrained`` model and processor into ``path``, which must not exist yet.

    Writes to a temporary sibling directory and renames it into place, so an
    interrupted save never leaves a half-written checkpoint at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose an empty path")
    tmp.rename(path)
    return path


def random_images(n: int, size: int, seed: int = 0):
    """``n`` random RGB PIL images of ``size`` x ``size`` pixels (deterministic)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8).numpy()
    return [Image.fromarray(a) for a in arr]
