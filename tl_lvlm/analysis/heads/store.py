"""Where a head attribution run keeps its collected logits, and what a rerun may reuse.

Layout of ``store_dir``::

    run.json              the run's :data:`~tl_lvlm.analysis.heads.config.STORE_KEYS`
    sample-{id:06d}/      one :class:`attribution.store.OutputStore` per kept sample (2 files)

``run.json`` is checked before anything else is written, so a rerun with another
configuration is refused with the store untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attribution.atomic import atomic_file
from attribution.store import read_state

RUN_NAME = "run.json"


def sample_store(store_dir: str | os.PathLike, sample_id: int) -> Path:
    return Path(store_dir) / f"sample-{sample_id:06d}"


def check_run(store_dir: str | os.PathLike, run_config: dict[str, Any]) -> None:
    """Create ``store_dir/run.json``, or refuse a store written by another configuration.

    Raises:
        ValueError: the stored configuration differs (naming the keys), or the directory
            holds sample stores without ``run.json`` (an older layout); nothing is written.
    """
    root = Path(store_dir)
    path = root / RUN_NAME
    config = json.loads(json.dumps(run_config, sort_keys=True))
    if not path.exists():
        if any(root.glob("sample-*")):
            raise ValueError(
                f"store {root} holds sample stores but no {RUN_NAME} (written by an older "
                "version of tl-lvlm): use a new store directory"
            )
        root.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(path, exclusive=True) as f:
                f.write(json.dumps(config, indent=2, sort_keys=True).encode())
        except FileExistsError:  # a concurrent shard created it first; compare below
            pass
    stored = json.loads(path.read_text())
    diffs = [
        f"{key}: stored {stored.get(key)!r}, now {config.get(key)!r}"
        for key in sorted(stored.keys() | config.keys())
        if stored.get(key) != config.get(key)
    ]
    if diffs:
        raise ValueError(
            f"store {root} holds the logits of a run with another configuration "
            f"({'; '.join(diffs)}); nothing was changed. Rerun with that configuration to "
            "resume it, or use a new store directory (a new output directory)."
        )


def stored_samples(store_dir: str | os.PathLike, sample_ids: Sequence[int] | None = None) -> int:
    """Number of samples whose collected logits are complete in ``store_dir``.

    A sample is complete once its run has collected every mask it uses (all of
    ``n_masks``, or ``n_masks_used`` of an ``"auto"`` run); 0 for a missing directory.
    ``sample_ids`` counts only those samples (one shard's), default all.
    """
    count = 0
    samples = (
        Path(store_dir).glob("sample-*")
        if sample_ids is None
        else (sample_store(store_dir, i) for i in sample_ids)
    )
    for sample in samples:
        state = read_state(sample)
        count += state is not None and state.get("complete") is not None
    return count
