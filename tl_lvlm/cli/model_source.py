"""Check a ``--model`` argument before loading it: zoo name, local directory, or hub name.

:func:`check_model_source` answers before any model loads, with a "did you mean"; for a
local path without importing torch (under a second):

- a zoo name (:data:`tl_lvlm.zoo.ZOO`) must have its checkpoint installed; other names in the
  zoo's ``tl-lvlm/`` namespace are typos, never looked up on the hub;
- a name that looks local (starts with ``.``, ``/`` or ``~``, has more than one ``/``, is not
  a valid hub id, or its first component exists here) must be a directory with a
  ``config.json``: the hub is never tried for it;
- any other name is a hub id: found in the local Hugging Face cache, or else asked of the
  hub once (no retries), so that a name that does not exist or a hub that cannot be reached
  fails at once.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from tl_lvlm.cli.common import CliError

#: ``name`` or ``owner/name`` (Hugging Face's repo id rules, simplified).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_ZOO_NAMESPACE = "tl-lvlm/"
_HUB_TIMEOUT_S = 10.0


def check_model_source(name: str, flag: str = "--model") -> None:
    """Raise :class:`~tl_lvlm.cli.common.CliError` when ``name`` cannot be loaded (see module)."""
    if name.startswith(_ZOO_NAMESPACE):
        # The zoo imports torch: only names of its namespace pay for it.
        from tl_lvlm import zoo

        if name not in zoo.ZOO:
            raise CliError(
                f"{flag} {name} is not a zoo model{_did_you_mean(name, list(zoo.ZOO))}; "
                f"zoo models: {', '.join(zoo.ZOO)}"
            )
        try:
            zoo.resolve(name)
        except FileNotFoundError as err:
            raise CliError(str(err)) from None
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(
                f"{flag} {name} is a directory without config.json; pass a directory written "
                "by save_pretrained, a hub name or a zoo name"
            )
        return
    if path.exists():
        raise CliError(f"{flag} {name} is a file; pass a model directory, a hub name or a zoo name")
    if _looks_local(name):
        raise CliError(f"{flag} {name}: no such directory{_did_you_mean_path(path)}")
    _check_hub(name, flag)


def _looks_local(name: str) -> bool:
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not _HUB_ID.match(name):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    # "models/llava" where ./models exists: a path with a typo, not a hub id.
    return Path(name.split("/")[0]).exists()


def _check_hub(name: str, flag: str) -> None:
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from tl_lvlm.zoo import ZOO

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    hint = _did_you_mean(name, list(ZOO))
    if constants.HF_HUB_OFFLINE:
        raise CliError(
            f"{flag} {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            f"{hint}; download it first, or pass a local directory"
        )
    try:
        model_info(name, timeout=_HUB_TIMEOUT_S)
    except GatedRepoError:
        return  # it exists; from_pretrained reports what access it needs
    except RepositoryNotFoundError:
        raise CliError(
            f"{flag} {name}: no such model on the Hugging Face hub (or it is private: log in "
            f"with `hf auth login`){hint}"
        ) from None
    except Exception as err:  # any transport failure: DNS, proxy, timeout, TLS
        raise CliError(
            f"{flag} {name} is not in the local Hugging Face cache and the hub cannot be "
            f"reached ({type(err).__name__}: {err}){hint}; download it first, or pass a local "
            "directory"
        ) from None


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _did_you_mean_path(path: Path) -> str:
    """The closest sibling of the first missing component of ``path``."""
    parts = path.parts
    for i in range(1, len(parts) + 1):
        if not Path(*parts[:i]).exists():
            parent, missing = Path(*parts[: i - 1]) if i > 1 else Path("."), parts[i - 1]
            break
    else:
        return ""
    siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    close = difflib.get_close_matches(missing, siblings, n=1, cutoff=0.6)
    if close:
        suggestion = str(parent / close[0]) if i > 1 else close[0]
        rest = parts[i:]
        return f"; did you mean {Path(suggestion, *rest)}?"
    return ""
