"""Content hashes that identify samples and baselines in resumable stores' configurations."""

from __future__ import annotations

import hashlib
import json

import torch


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and contents, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(json.dumps([str(t.dtype), *t.shape]).encode())
        # Bytes through a uint8 view: numpy has no bfloat16.
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
