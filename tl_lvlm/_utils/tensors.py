"""Tensor gathers shared by the hook reference and the recomputed attention."""

from __future__ import annotations

from jaxtyping import Int
from torch import Tensor


def gather_positions(t: Tensor, index: Int[Tensor, "batch n"], dim: int) -> Tensor:
    """``t`` at per-row positions ``index`` along ``dim`` (``t``'s dim 0 is the batch)."""
    shape = [1] * t.ndim
    shape[0], shape[dim] = index.shape
    index = index.view(shape).expand(*t.shape[:dim], index.shape[1], *t.shape[dim + 1 :])
    return t.gather(dim, index)
