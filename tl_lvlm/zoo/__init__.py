"""Small LVLMs trained here and shipped with the package, for offline demos and checks.

``tl-lvlm/tiny-digits``: a complete LLaVA (CLIP vision tower, two-layer projector,
Llama decoder, byte-level BPE tokenizer, ``LlavaProcessor``) trained from scratch
on scikit-learn's handwritten digits to answer
``USER: <image>\\nWhat is the main object in this image? Answer in a single word.
ASSISTANT:`` with the digit's word (`` seven``). See ``checkpoints/tiny-digits/
training.json`` for its configuration, training run and accuracies per style, and
:mod:`tl_lvlm.zoo.train_digits` to retrain it.

Model loaders call :func:`resolve` so that a zoo name works wherever a hub name or
a local path does::

    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from tl_lvlm.zoo import resolve

    path = resolve("tl-lvlm/tiny-digits")
    model = LlavaForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tl_lvlm.templates import LLAVA_15_TEMPLATE
from tl_lvlm.tiny_llava import DIGIT_WORDS

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: Zoo name -> local checkpoint directory (model + processor, ``save_pretrained`` format).
ZOO: dict[str, str] = {
    "tl-lvlm/tiny-digits": str(CHECKPOINT_DIR / "tiny-digits"),
}

#: The question the digits model was trained on (LLaVA-1.5 chat format).
DIGITS_QUESTION = "What is the main object in this image? Answer in a single word."


def resolve(name_or_path: str | os.PathLike) -> str:
    """Local directory of a zoo model; any other name or path is returned unchanged."""
    name = os.fspath(name_or_path)
    path = ZOO.get(name)
    if path is None:
        return name
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"zoo model {name!r} should be at {path} but its config.json is missing; "
            "was the package installed without its checkpoints?"
        )
    return path


def digits_prompt(question: str = DIGITS_QUESTION) -> str:
    """The LLaVA-1.5 prompt the digits model answers."""
    return LLAVA_15_TEMPLATE.format(question=question)


def digit_token_ids(tokenizer) -> list[int]:
    """Token id of `` zero`` .. `` nine``; raises if a word is not a single token."""
    ids = []
    for word in DIGIT_WORDS:
        toks = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"' {word}' is not a single token: {toks}")
        ids.append(toks[0])
    return ids


@torch.no_grad()
def predict_first_tokens(
    hf_model,
    processor,
    images: Sequence,
    question: str = DIGITS_QUESTION,
    batch_size: int = 64,
) -> np.ndarray:
    """Greedy first answer token (argmax at the final prompt position) per image."""
    prompt = digits_prompt(question)
    was_training = hf_model.training
    hf_model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            enc = processor(images=batch, text=[prompt] * len(batch), return_tensors="pt")
            enc = {k: v.to(hf_model.device) for k, v in enc.items()}
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(hf_model.dtype)
            logits = hf_model(**enc, logits_to_keep=1).logits[:, -1]
            out.append(logits.argmax(-1).cpu().numpy())
    finally:
        hf_model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_accuracy(
    hf_model,
    processor,
    images: Sequence,
    labels: Sequence[int] | np.ndarray,
    batch_size: int = 64,
    question: str = DIGITS_QUESTION,
) -> float:
    """Fraction of images whose greedy first answer token is the label's digit word.

    ``labels`` are digits 0..9; the prediction is the argmax of the logits at the
    final prompt position, compared with the token of `` zero`` .. `` nine``.
    """
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    word_ids = np.asarray(digit_token_ids(processor.tokenizer))
    pred = predict_first_tokens(hf_model, processor, images, question, batch_size)
    return float(np.mean(pred == word_ids[labels]))


__all__ = [
    "CHECKPOINT_DIR",
    "DIGITS_QUESTION",
    "ZOO",
    "digit_token_ids",
    "digits_prompt",
    "evaluate_accuracy",
    "predict_first_tokens",
    "resolve",
]
