"""The input samples of head attribution: tuples or a prepared batch, one at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_lvlm.inputs import LVLMInputs


@dataclass
class Samples:
    """The input samples, prepared one at a time (only the shard's are ever run)."""

    model: Any
    pairs: list[tuple[Any, str]] | None
    batch: LVLMInputs | None
    labels: list[Any]  # as given; answer_token_id checks each

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def parse(cls, model, samples, labels) -> Samples:
        if isinstance(samples, LVLMInputs):
            n = samples.batch_size
            return cls(model, None, samples, per_sample(labels, n, "labels", list_only=True))
        if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
            raise TypeError(
                "samples must be a list of (image, question) or (image, question, label) "
                f"tuples, or LVLMInputs from model.prepare, got {type(samples).__name__}"
            )
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
        return cls(model, pairs, None, given)

    @property
    def template(self) -> str:
        return self.model.template if self.batch is None else self.batch.template

    def inputs(self, i: int) -> LVLMInputs:
        if self.batch is not None:
            return self.batch[i]
        image, question = self.pairs[i]
        return self.model.prepare([image], [question])

    def all_images(self) -> LVLMInputs:
        """Every sample's image in one batch (with the first question), e.g. for a mean."""
        if self.batch is not None:
            return self.batch
        # Image K/V only depend on the text before the image, so one question serves all.
        return self.model.prepare([image for image, _ in self.pairs], self.pairs[0][1])


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
