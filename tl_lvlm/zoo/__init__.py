"""Small LVLMs trained here and shipped with the package, for offline demos and checks.

``tl-lvlm/tiny-digits`` (version 2): a complete LLaVA (CLIP vision tower, two-layer
projector, 12-layer Llama decoder, byte-level BPE tokenizer, ``LlavaProcessor``)
trained from scratch on scikit-learn's handwritten digits, drawn at any size,
position and colour (:mod:`tl_lvlm.zoo.digits`), to answer four questions in one
token each (:mod:`tl_lvlm.zoo.questions`): the digit (`` seven``), the ink colour,
the background colour, even or odd. ``checkpoints/tiny-digits/README.md`` is its
model card, ``training.json`` its configuration, training run and accuracies;
:mod:`tl_lvlm.zoo.train_digits` retrains it, :mod:`tl_lvlm.zoo.evaluate_digits`
measures it.

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

from tl_lvlm.zoo.questions import DIGIT_WORDS, OBJECT_QUESTION, answer_token_ids, prompt

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: Zoo name -> local checkpoint directory (model + processor, ``save_pretrained`` format).
ZOO: dict[str, str] = {
    "tl-lvlm/tiny-digits": str(CHECKPOINT_DIR / "tiny-digits"),
}

#: The main-object question of the digits model (see :mod:`tl_lvlm.zoo.questions`).
DIGITS_QUESTION = OBJECT_QUESTION


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
    return prompt(question)


def digit_token_ids(tokenizer) -> list[int]:
    """Token id of `` zero`` .. `` nine``; raises if a word is not a single token."""
    return answer_token_ids(tokenizer, DIGIT_WORDS)


@torch.no_grad()
def predict_first_tokens(
    hf_model,
    processor,
    images: Sequence,
    question: str | Sequence[str] = DIGITS_QUESTION,
    batch_size: int = 64,
) -> np.ndarray:
    """Greedy first answer token (argmax at the final prompt position) per image.

    ``question`` is one question for all images or one per image; images sharing a
    question are batched together, so no row is padded.
    """
    questions = [question] * len(images) if isinstance(question, str) else list(question)
    if len(questions) != len(images):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    was_training = hf_model.training
    hf_model.eval()
    out = np.zeros(len(images), dtype=np.int64)
    try:
        for q in dict.fromkeys(questions):
            rows = [i for i, qi in enumerate(questions) if qi == q]
            text = digits_prompt(q)
            for start in range(0, len(rows), batch_size):
                sel = rows[start : start + batch_size]
                batch = [images[i] for i in sel]
                enc = processor(images=batch, text=[text] * len(batch), return_tensors="pt")
                enc = {k: v.to(hf_model.device) for k, v in enc.items()}
                enc["pixel_values"] = enc["pixel_values"].to(hf_model.dtype)
                logits = hf_model(**enc, logits_to_keep=1).logits[:, -1]
                out[sel] = logits.argmax(-1).cpu().numpy()
    finally:
        hf_model.train(was_training)
    return out


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
    word_ids = np.asarray(digit_token_ids(processor.tokenizer))
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return answer_accuracy(hf_model, processor, images, [question], word_ids[labels], batch_size)


def answer_accuracy(
    hf_model,
    processor,
    images: Sequence,
    questions: Sequence[str],
    answer_ids: Sequence[int] | np.ndarray,
    batch_size: int = 64,
) -> float:
    """Fraction of images whose greedy first answer token is ``answer_ids[i]``.

    ``questions``: one question for all images, or one per image.
    """
    answer_ids = np.asarray(answer_ids)
    if len(images) != len(answer_ids):
        raise ValueError(f"{len(images)} images but {len(answer_ids)} answers")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    question = questions[0] if len(questions) == 1 else list(questions)
    pred = predict_first_tokens(hf_model, processor, images, question, batch_size)
    return float(np.mean(pred == answer_ids))


__all__ = [
    "CHECKPOINT_DIR",
    "DIGITS_QUESTION",
    "ZOO",
    "answer_accuracy",
    "digit_token_ids",
    "digits_prompt",
    "evaluate_accuracy",
    "predict_first_tokens",
    "resolve",
]
