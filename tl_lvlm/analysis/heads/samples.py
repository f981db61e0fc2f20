"""The input samples of the analyses: tuples, a Hugging Face dataset or a prepared batch.

The forms :func:`~tl_lvlm.head_attribution`, :func:`~tl_lvlm.image_token_attribution` and
:func:`~tl_lvlm.flow.flow_sweep` take:

- ``[(image, question), ...]`` or ``[(image, question, label), ...]``;
- a ``datasets.Dataset`` with an image column and a label column
  (:mod:`tl_lvlm.inputs.hf_datasets`), asked ``question=``;
- :class:`~tl_lvlm.LVLMInputs` from ``model.prepare`` (prepared already: no ``question=``
  or ``image_size=``).

Unprepared samples are prepared one at a time (only the shard's are ever run), each image
resized to ``image_size`` when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_lvlm.analysis.heads.labels import label_tokens
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.inputs.hf_datasets import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    DatasetColumns,
    DatasetImages,
    is_dataset,
)
from tl_lvlm.inputs.images import check_image_size, to_rgb_images

SAMPLE_FORMS = (
    "a list of (image, question) or (image, question, label) tuples, a datasets.Dataset "
    "(with question=), or LVLMInputs from model.prepare"
)


@dataclass
class Samples:
    """The input samples, prepared one at a time (only the shard's are ever run)."""

    model: Any
    pairs: list[tuple[Any, str]] | None
    batch: LVLMInputs | None
    labels: list[Any]  # as given; answer_token_id checks each
    #: ``(width, height)`` every image is resized to, or None.
    image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def parse(
        cls,
        model,
        samples,
        labels,
        *,
        question: str | None = None,
        image_column: str = IMAGE_COLUMN,
        label_column: str | None = LABEL_COLUMN,
        image_size: int | tuple[int, int] | None = None,
    ) -> Samples:
        """Parse ``samples`` (see the module doc) and their ``labels``.

        Raises:
            TypeError: samples of another form, or a question that is not a string.
            ValueError: ``question=`` or ``image_size=`` with samples that do not take
                them, labels given twice, a dataset's missing or unusable column.
        """
        size = check_image_size(image_size)
        columns_given = (image_column, label_column) != (IMAGE_COLUMN, LABEL_COLUMN)
        if is_dataset(samples):
            return cls._from_dataset(
                model, samples, labels, question, DatasetColumns(image_column, label_column), size
            )
        if columns_given:
            raise ValueError(
                "image_column= and label_column= choose the columns of a datasets.Dataset; "
                f"samples is {type(samples).__name__}: leave them out"
            )
        if question is not None:
            raise ValueError(
                "question= asks a datasets.Dataset's images a question; these samples carry "
                "their questions (the tuples') or are prepared already: leave it out"
            )
        if isinstance(samples, LVLMInputs):
            if size is not None:
                raise ValueError(
                    "image_size= resizes images before they are prepared, but samples are "
                    "LVLMInputs (prepared already): pass image_size to model.prepare instead"
                )
            n = samples.batch_size
            return cls(model, None, samples, per_sample(labels, n, "labels", list_only=True))
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
            kind = type(samples).__name__
            split = "; pick one split, e.g. samples['train']" if kind == "DatasetDict" else ""
            raise TypeError(f"samples must be {SAMPLE_FORMS}, got {kind}{split}")
        if len(samples) == 0:
            raise ValueError("samples is empty: pass at least one (image, question) pair")
        pairs, tuple_labels = [], []
        for i, s in enumerate(samples):
            if (
                not isinstance(s, (tuple, list))
                or len(s) not in (2, 3)
                or not isinstance(s[1], str)
            ):
                raise TypeError(
                    f"samples[{i}] must be (image, question) or (image, question, label) with a "
                    f"str question, got {type(s).__name__}"
                    + (f" of length {len(s)}" if isinstance(s, (tuple, list)) else "")
                )
            pairs.append((s[0], s[1]))
            tuple_labels.append(s[2] if len(s) == 3 else None)
        if labels is not None and any(lab is not None for lab in tuple_labels):
            raise ValueError("labels given both in the sample tuples and as labels=; pass one")
        given = (
            tuple_labels
            if labels is None
            else per_sample(labels, len(pairs), "labels", list_only=True)
        )
        return cls(model, pairs, None, given, size)

    @classmethod
    def _from_dataset(cls, model, dataset, labels, question, columns, size) -> Samples:
        if not isinstance(question, str):
            raise TypeError(
                "a datasets.Dataset holds images and labels but no question: pass "
                f"question='...' (got {question!r})"
            )
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: pass at least one row")
        rows = DatasetImages.open(dataset, columns)
        if labels is not None and rows.labels is not None:
            raise ValueError(
                f"labels given both in the dataset's column {columns.label!r} and as labels=; "
                "pass one (label_column=None to use labels=)"
            )
        given = per_sample(labels, len(rows), "labels", list_only=True)
        pairs = [(image, question) for image in rows.images()]
        return cls(model, pairs, None, given if rows.labels is None else rows.labels, size)

    @property
    def template(self) -> str:
        return self.model.template if self.batch is None else self.batch.template

    def label_tokens(self) -> list[tuple[int, ...] | None]:
        """Each label's answer tokens as written after the prompt (None for no label); a
        label of several words is attributed through the first and checked whole."""
        return [
            None if a is None else label_tokens(self.model, a, self.template) for a in self.labels
        ]

    def inputs(self, i: int) -> LVLMInputs:
        if self.batch is not None:
            return self.batch[i]
        image, question = self.pairs[i]
        return self.model.prepare([image], [question], image_size=self.image_size)

    def all_inputs(self) -> LVLMInputs:
        """Every sample in one batch, each with its own question."""
        if self.batch is not None:
            return self.batch
        images, questions = zip(*self.pairs, strict=True)
        return self.model.prepare(list(images), list(questions), image_size=self.image_size)

    def all_images(self) -> LVLMInputs:
        """Every sample's image in one batch (with the first question), e.g. for a mean."""
        if self.batch is not None:
            return self.batch
        # Image K/V only depend on the text before the image, so one question serves all.
        images = [image for image, _ in self.pairs]
        return self.model.prepare(images, self.pairs[0][1], image_size=self.image_size)

    def reference(self, reference):
        """``reference`` images resized to ``image_size`` as the samples are (a prepared
        batch or None as given), so that the mean is over images of the samples' size."""
        if self.image_size is None or reference is None or isinstance(reference, LVLMInputs):
            return reference
        return to_rgb_images(list(reference), self.image_size)


def per_sample(value, n: int, name: str, *, list_only: bool = False) -> list:
    """Broadcast one value (or validate one per sample) to a list of ``n``."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, int, np.integer)) and not list_only:
        return [value] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence with one entry per sample, got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} samples; give one per sample")
    return list(value)
