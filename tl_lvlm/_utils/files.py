"""Strict JSON written atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from attribution.atomic import atomic_file


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and NaN / inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented strict JSON, atomically."""
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, allow_nan=False).encode())
