"""TransformerLens forward-hook lists and a recording hook."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

#: ``[(hook name, hook function), ...]`` as ``run_with_hooks(fwd_hooks=...)`` takes them.
HookList = list[tuple[str, Callable]]


def record_into(seen: dict[str, Tensor], key: str) -> Callable:
    """A read-only hook that keeps the tensor it sees as ``seen[key]`` (for a later hook)."""

    def hook(t: Tensor, hook) -> None:
        seen[key] = t

    return hook
