"""Prepared LVLM inputs and their token groups.

A LLaVA-1.5 prompt ``USER: <image>\\n{question} ASSISTANT:`` splits into the
token groups the paper's analyses talk about:

- ``prefix``: everything before the image (BOS, system text, ``USER:``)
- ``image``: the image tokens (576 for LLaVA-1.5)
- ``question``: from the end of the image to the end of the question
- ``role``: the template's text after the question except its last token (``ASSISTANT``)
- ``final``: the last token (``:``), the position that predicts the answer

Groups are computed from the tokenizer's character offsets of the processed
prompt, never from hard-coded positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from tl_lvlm.families import LVLMFamily

GROUPS = ("prefix", "image", "question", "role", "final")
"""Token group names, in prompt order."""


def left_padding(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Left-padding tokens per row (prompts are left-padded: padding is the mask's zeros)."""
    return (attention_mask == 0).sum(-1)


def padding_position_ids(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Positions that skip left padding, so a padded row equals its unpadded run."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class LVLMInputs:
    """A batch of prompts with images, ready for :class:`~tl_lvlm.HookedLVLM`.

    Token groups are index tensors ``[batch, n]`` of positions into ``input_ids``,
    padded with ``-1`` where a row has fewer positions than the longest row (rows
    differ when questions have different lengths; prompts are left-padded).
    ``group_mask(name)`` gives the same as a ``[batch, pos]`` boolean mask and
    ``positions(name, row)`` the unpadded positions of one row.
    """

    input_ids: Int[Tensor, "batch pos"]
    pixel_values: Float[Tensor, "batch ..."]
    attention_mask: Int[Tensor, "batch pos"]
    prefix: Int[Tensor, "batch n_prefix"]
    image: Int[Tensor, "batch n_image"]
    question: Int[Tensor, "batch n_question"]
    role: Int[Tensor, "batch n_role"]
    final: Int[Tensor, "batch 1"]
    template: str = ""
    questions: list[str] = field(default_factory=list)
    #: Extra processor outputs the model needs (e.g. ``image_sizes``).
    extra: dict[str, Tensor] = field(default_factory=dict)
    #: The model's family, which turns these inputs into forward kwargs
    #: (:meth:`model_kwargs`); set by ``HookedLVLM.prepare``.
    family: LVLMFamily | None = field(default=None, repr=False, compare=False)
    #: The RGB PIL images the rows were prepared from (empty for ``pixel_values`` given as a
    #: tensor): a mean baseline on a dynamic-resolution family resizes its reference images
    #: to each row's image size (:mod:`tl_lvlm.ablation.baseline`).
    images: list = field(default_factory=list, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Positions that ignore left padding, so a padded row equals its unpadded run.

        Families with other position ids (M-RoPE) give theirs in :meth:`model_kwargs`.
        """
        return padding_position_ids(self.attention_mask)

    def padding(self, row: int = 0) -> int:
        """Number of left-padding tokens of ``row``."""
        return int(left_padding(self.attention_mask[row : row + 1])[0])

    def group(self, name: str) -> Int[Tensor, "batch n"]:
        """Index tensor of a token group by name (see :data:`GROUPS`)."""
        if name not in GROUPS:
            raise ValueError(f"unknown token group {name!r}; expected one of {GROUPS}")
        return getattr(self, name)

    def positions(self, name: str, row: int = 0) -> Int[Tensor, " n"]:
        """Unpadded positions of group ``name`` in batch row ``row``."""
        idx = self.group(name)[row]
        return idx[idx >= 0]

    def group_mask(self, name: str) -> Bool[Tensor, "batch pos"]:
        """Boolean mask of group ``name`` over positions."""
        idx = self.group(name)
        mask = torch.zeros(self.input_ids.shape, dtype=torch.bool, device=idx.device)
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)
        keep = idx >= 0
        mask[rows[keep], idx[keep]] = True
        return mask

    def image_span(self, row: int = 0) -> tuple[int, int]:
        """``(start, end)`` of the image span of ``row`` (end exclusive): contiguous image
        tokens, or from the first to the last where the family interleaves them with marker
        tokens (``LVLMFamily.interleaved_image``)."""
        pos = self.positions("image", row)
        if pos.numel() == 0:
            raise ValueError(f"row {row} has no image tokens")
        start, end = int(pos[0]), int(pos[-1]) + 1
        interleaved = self.family is not None and self.family.interleaved_image
        if end - start != pos.numel() and not interleaved:
            raise ValueError(f"row {row}: image tokens are not contiguous")
        return start, end

    def model_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for the bridge / HF forward besides ``input_ids``
        (:meth:`tl_lvlm.families.LVLMFamily.model_kwargs` of the inputs' family)."""
        if self.family is None:
            raise ValueError(
                "these inputs carry no model family to build forward arguments; prepare them "
                "with model.prepare(images, questions)"
            )
        return self.family.model_kwargs(self)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LVLMInputs:
        """Move tensors to ``device``; ``dtype`` casts ``pixel_values`` only."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device, dtype=dtype if f.name == "pixel_values" else None)
            moved[f.name] = v
        moved["extra"] = {k: v.to(device) for k, v in self.extra.items()}
        return replace(self, **moved)

    def __getitem__(self, rows: int | slice | list[int]) -> LVLMInputs:
        """Select batch rows (keeps the batch dimension). Padding columns are kept."""
        if isinstance(rows, int):
            rows = [rows]
        elif isinstance(rows, slice):
            rows = list(range(self.batch_size))[rows]
        sel = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v[rows]
            sel[f.name] = v
        sel["questions"] = [self.questions[i] for i in rows] if self.questions else []
        sel["extra"] = {k: v[rows] for k, v in self.extra.items()}
        sel["images"] = [self.images[i] for i in rows] if self.images else []
        return replace(self, **sel)
