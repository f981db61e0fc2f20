"""The questions ``tl-lvlm/tiny-digits`` answers, their phrasings and their one-token answers.

Four tasks, each asked about one rendered digit (:mod:`tl_lvlm.zoo.digits`):

==============  =====================================================  ========================
task            canonical phrasing                                     answer
==============  =====================================================  ========================
``object``      What is the main object in this image? Answer in a     the digit's word
                single word.                                           (`` seven``)
``ink``         What color is the digit? Answer in a single word.      the ink colour (`` red``)
``background``  What color is the background? Answer in a single       the background colour
                word.
``parity``      Is the number even or odd? Answer in a single word.    `` even`` / `` odd``
==============  =====================================================  ========================

Every answer is a single token of the model's tokenizer (the word with its leading
space). Each task has several phrasings: :attr:`Task.train_phrasings` (the canonical
one first) are the ones the model was trained on, :attr:`Task.held_out_phrasings` were
never shown in training and measure whether the model reads the question rather than
memorising strings. The held-out phrasings reuse words of the training phrasings in new
combinations, so none of their tokens has an untrained embedding.

The prompt is LLaVA-1.5's ``USER: <image>\\n{question} ASSISTANT:`` (:func:`prompt`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tl_lvlm.inputs.templates import LLAVA_15_TEMPLATE

#: The digits' answer words, as the bundled model writes them (after a space).
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


#: The palette of ink and background colours, name -> RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
PARITY_WORDS: tuple[str, ...] = ("even", "odd")

#: The chat template of the bundled model.
TEMPLATE = LLAVA_15_TEMPLATE


@dataclass(frozen=True)
class Task:
    """One question about a rendered digit.

    ``answer(digit, ink, background)`` gives the answer word (no leading space) for a
    digit 0..9 drawn in colour ``ink`` on colour ``background`` (names of :data:`PALETTE`).
    """

    name: str
    train_phrasings: tuple[str, ...]
    held_out_phrasings: tuple[str, ...]
    answers: tuple[str, ...]
    answer: Callable[[int, str, str], str]

    @property
    def question(self) -> str:
        """The canonical phrasing (the first training phrasing)."""
        return self.train_phrasings[0]

    @property
    def phrasings(self) -> tuple[str, ...]:
        return self.train_phrasings + self.held_out_phrasings


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "object",
            (
                "What is the main object in this image? Answer in a single word.",
                "What digit is shown? Answer in a single word.",
                "Which number is written here?",
                "What number is in this image?",
                "Name the digit in the picture.",
            ),
            (
                "Which digit is in this image? Answer in a single word.",
                "What number is shown here?",
            ),
            tuple(DIGIT_WORDS),
            lambda digit, ink, background: DIGIT_WORDS[digit],
        ),
        Task(
            "ink",
            (
                "What color is the digit? Answer in a single word.",
                "What color is the number?",
                "Which color is the ink? Answer in a single word.",
                "Name the color of the digit in this image.",
                "Which color is the digit in this image?",
                "What is the ink color of the picture?",
                "Name the digit color.",
            ),
            (
                "Which color is the number written in? Answer in a single word.",
                "What is the color of the digit?",
            ),
            COLORS,
            lambda digit, ink, background: ink,
        ),
        Task(
            "background",
            (
                "What color is the background? Answer in a single word.",
                "Which color is the background in this image?",
                "Name the background color.",
                "What is the background color of the picture?",
                "Name the color of the background in this image.",
                "What color is the background of this image?",
                "Which color is the background? Answer in a single word.",
            ),
            (
                "What color is the background here? Answer in a single word.",
                "Which background color is shown?",
            ),
            COLORS,
            lambda digit, ink, background: background,
        ),
        Task(
            "parity",
            (
                "Is the number even or odd? Answer in a single word.",
                "Is the digit even or odd?",
                "Even or odd? Answer in a single word.",
                "Is the number in this image odd or even?",
            ),
            (
                "Is the digit shown here even or odd? Answer in a single word.",
                "Is this number odd or even?",
            ),
            PARITY_WORDS,
            lambda digit, ink, background: PARITY_WORDS[digit % 2],
        ),
    )
}

#: The canonical question of each task.
OBJECT_QUESTION = TASKS["object"].question
INK_QUESTION = TASKS["ink"].question
BACKGROUND_QUESTION = TASKS["background"].question
PARITY_QUESTION = TASKS["parity"].question

#: Every answer word of every task, without leading spaces, in a fixed order.
ANSWER_WORDS: tuple[str, ...] = tuple(dict.fromkeys(w for t in TASKS.values() for w in t.answers))


def task(name: str) -> Task:
    """The task called ``name``; raises ``ValueError`` naming the tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {tuple(TASKS)}")
    return TASKS[name]


def prompt(question: str = OBJECT_QUESTION) -> str:
    """The full prompt of the bundled model for ``question``."""
    return TEMPLATE.format(question=question)


def answer_token_ids(tokenizer, words: tuple[str, ...] | list[str]) -> list[int]:
    """Token id of each `` word``; raises ``ValueError`` if one is not a single token."""
    ids = []
    for word in words:
        toks = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"' {word}' is not a single token of this tokenizer: {toks}")
        ids.append(toks[0])
    return ids
