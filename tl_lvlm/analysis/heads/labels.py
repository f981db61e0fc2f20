"""Labels and targets as token ids: a word must be exactly the one token the model writes.

A label of several words (a COCO name such as ``"traffic light"`` or ``"hot dog"``) is the
exception (:func:`label_tokens`): it is attributed through the first token of the answer as
the tokenizer writes it after the prompt (``' traffic'``), and a sample counts as answered
correctly only when the model's greedy answer writes the whole name (:func:`answers_label`),
not its first word alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from attribution.own_checks import checks_own_arguments
from tl_lvlm.inputs.templates import split_template

Answer = int | str


@checks_own_arguments
def answer_token_id(model, answer: Answer, template: str | None = None) -> int:
    """Token id of ``answer`` as the model would generate it right after the prompt.

    An int is taken as a token id. A string is tokenized as the continuation of the
    template's text after the question (e.g. ``" ASSISTANT:"``): written after it with a
    space, unless that text ends in whitespace or ``answer`` starts with it, and the
    tokens that follow the template's own are the answer's. Whether the space becomes
    part of the word's token (``' seven'``, as byte-level BPE and SentencePiece
    tokenizers write a word) is the tokenizer's convention, so ``"seven"`` gives the id
    the model emits when it answers "seven", whatever marks the tokenizer uses.

    The answer must be exactly one token: the attributed logit is that of one token,
    and cutting ``"four five"`` to ``" four"`` would silently attribute another answer.

    Case is kept as given: ``"Five"`` and ``"five"`` are different strings to the
    tokenizer, and a vocabulary with only lower-case words splits ``"Five"`` into
    several tokens. Nothing is lowercased for you; the error names a single-token
    spelling (another case, no surrounding spaces) when one exists.

    Raises:
        TypeError: neither an int nor a non-empty string.
        ValueError: a token id outside the vocabulary; a string that is not exactly one
            token after the prompt (the message lists its tokens and suggests a
            single-token form if one exists).
    """
    tokenizer = model.tokenizer
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        if not 0 <= int(answer) < len(tokenizer):
            raise ValueError(f"token id {answer} is outside the vocabulary [0, {len(tokenizer)})")
        return int(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise TypeError(
            f"an answer/label/target must be a token id (int) or a non-empty word (str), "
            f"got {answer!r}"
        )
    context = split_template(template or model.template)[2]
    tokens = _continuation(tokenizer, context, answer)
    if len(tokens) == 1:
        return tokens[0]
    pieces = [tokenizer.decode([t]) for t in tokens]
    message = (
        f"label/target {answer!r} is {len(tokens)} tokens {pieces} when the model writes it "
        f"after {context!r}, not one; the attributed logit is that of a single token"
    )
    suggestions = []
    for form in dict.fromkeys(
        (answer.strip(), answer.strip().lower(), answer.strip().capitalize(), answer.upper())
    ):
        ids = _continuation(tokenizer, context, form) if form else []
        if form != answer and len(ids) == 1:
            suggestions.append(f"{form!r} (token {ids[0]}, {tokenizer.decode(ids)!r})")
    if suggestions:
        message += f"; did you mean {' or '.join(suggestions)}?"
    else:
        message += "; pass a single-token word or a token id (e.g. of its first token)"
    raise ValueError(message)


@checks_own_arguments
def label_tokens(model, label: Answer, template: str | None = None) -> tuple[int, ...]:
    """Token ids of an expected answer (a label) as the model writes it after the prompt.

    A token id or a one-word label gives its one token (:func:`answer_token_id`: a word
    must be one token, so that a misspelt or wrongly cased label is refused with a
    suggestion). A label of several words gives every token the tokenizer writes for it
    after the template's text (``"traffic light"`` -> ``' traffic'``, ``' light'`` where
    those are tokens); the first is the one attributed, and :func:`answers_label` checks
    the whole name against the model's answer.

    Raises:
        TypeError, ValueError: as :func:`answer_token_id`, for a one-word label.
    """
    if isinstance(label, str) and len(label.split()) > 1:
        context = split_template(template or model.template)[2]
        return tuple(_continuation(model.tokenizer, context, label))
    return (answer_token_id(model, label, template),)


@torch.no_grad()
def answers_label(model, inputs, tokens: Sequence[int]) -> bool:
    """Whether the model's greedy answer to ``inputs`` (one row) begins with ``tokens``.

    One token: the argmax of the final-position logits. Several (a multi-word label, see
    :func:`label_tokens`): the first ``len(tokens)`` tokens of ``model.generate``, so that
    ``"traffic cone"`` does not pass for ``"traffic light"``.
    """
    if len(tokens) == 1:
        return int(model.final_logits(inputs).argmax(-1)[0]) == int(tokens[0])
    written = model.generate(inputs, max_new_tokens=len(tokens), return_type="tokens")[0]
    return written.tolist() == [int(t) for t in tokens]


def _continuation(tokenizer, context: str, answer: str) -> list[int]:
    """Token ids that ``answer`` adds after ``context`` (as the model writes it there)."""
    sep = "" if context[-1:].isspace() or answer[:1].isspace() else " "
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + sep + answer, add_special_tokens=False)["input_ids"]
    if len(full) <= len(base) or full[: len(base)] != base:
        raise ValueError(
            f"cannot tokenize answer {answer!r} on its own: written after {context!r} it "
            "changes the template's own tokens; pass the token id instead"
        )
    return [int(t) for t in full[len(base) :]]
