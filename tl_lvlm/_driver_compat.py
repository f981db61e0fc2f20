"""MERGE: delete this module once the driver branch's head attribution API is in main.

The CLI is written against the agreed API (``on_sample_done``, ``batch_size=None`` = auto,
``n_masks="auto"``, :func:`tl_lvlm.head_attribution.stored_samples`). Until that API lands,
these two functions run the CLI on the current one, so that the branch's tests stay green.
At merge: in ``tl_lvlm/cli.py`` call ``head_attribution`` and ``stored_samples`` directly.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from tl_lvlm.cli_common import CliError

_OLD_DEFAULT_BATCH = 64


def has_driver_api() -> bool:
    from tl_lvlm import head_attribution as module

    return "on_sample_done" in inspect.signature(module.head_attribution).parameters


def head_attribution(model, samples, **kwargs):
    from tl_lvlm import head_attribution as module

    if not has_driver_api():
        kwargs.pop("on_sample_done")
        if kwargs["n_masks"] == "auto":
            raise CliError("--n-masks auto needs the driver branch's head attribution")
        if kwargs["batch_size"] is None:
            kwargs["batch_size"] = _OLD_DEFAULT_BATCH
    return module.head_attribution(model, samples, **kwargs)


def stored_samples(store_dir: Path) -> int:
    from tl_lvlm import head_attribution as module

    if hasattr(module, "stored_samples"):
        return module.stored_samples(store_dir)
    # Old store: one directory per sample that has started; count those (an upper bound).
    return len(list(Path(store_dir).glob("sample-*"))) if Path(store_dir).is_dir() else 0
