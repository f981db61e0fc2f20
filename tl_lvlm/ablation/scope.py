"""Ablation scopes: which queries see an ablated head's baseline image K/V."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Bool
from torch import Tensor

from tl_lvlm.inputs import LVLMInputs

if TYPE_CHECKING:
    from tl_lvlm.model import HookedLVLM

Scope = Literal["text", "all"]
SCOPES = ("text", "all")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")


def ablated_queries(
    model: HookedLVLM, inputs: LVLMInputs, scope: Scope
) -> tuple[int, Bool[Tensor, "batch q_edited n_image"]]:
    """Which (query, image column) pairs of each row see the baseline of an ablated head.

    Returns ``(first, affected)``: ``first`` is the first query row any batch row
    edits; ``affected[b, i, j]`` is True where query ``first + i`` of row ``b`` reads
    image column ``j`` and sees the baseline there. Hook references only touch query
    rows from ``first`` on (the suffix for scope ``"text"``), which keeps their
    tensors small.
    """
    image = inputs.image  # [batch, n_image] padded positions; rows share n_image
    pos = torch.arange(inputs.seq_len, device=model.device)
    image_end = image[:, -1:] + 1
    # Rows whose queries see the baseline: after the image ("text") or from its
    # start ("all"); causality then limits an image query to the columns before it,
    # unless the family's image tokens attend to each other both ways.
    first_query = image_end if scope == "text" else image[:, :1]
    first = int(first_query.min())
    rows = pos[first:]
    visible = image[:, None, :] <= rows[None, :, None]  # [batch, q - first, n_image]
    if model.family.bidirectional_image:
        visible |= (rows[None, :] < image_end)[:, :, None]
    return first, (rows[None, :] >= first_query)[:, :, None] & visible
