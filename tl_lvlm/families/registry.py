"""The family registry: HF architecture -> :class:`~tl_lvlm.families.base.LVLMFamily` subclass.

Built-in families register themselves when :mod:`tl_lvlm.families` is imported;
:func:`register_family` adds a user's family without touching tl-lvlm's code.
"""

from __future__ import annotations

from types import MappingProxyType

from attribution.own_checks import checks_own_arguments
from tl_lvlm.families.base import LVLMFamily

_REGISTRY: dict[str, type[LVLMFamily]] = {}

#: Read-only live view of the registry: HF architecture -> family class.
FAMILIES = MappingProxyType(_REGISTRY)


@checks_own_arguments
def register_family(family: type[LVLMFamily]) -> type[LVLMFamily]:
    """Register ``family`` for the HF architecture it names; usable as a class decorator.

    Raises:
        TypeError: ``family`` is not an :class:`LVLMFamily` subclass.
        ValueError: it names no architecture, or its architecture is already registered.
    """
    if not (isinstance(family, type) and issubclass(family, LVLMFamily)):
        raise TypeError(f"register_family takes an LVLMFamily subclass, got {family!r}")
    if not family.architecture or not family.name:
        raise ValueError(
            f"{family.__name__} must set the class attributes `name` and `architecture` "
            "(the HF config's architectures[0]) before it can be registered"
        )
    known = _REGISTRY.get(family.architecture)
    if known is not None:
        raise ValueError(
            f"architecture {family.architecture!r} is already registered to "
            f"{known.__module__}.{known.__qualname__} ({known.name}); a family cannot be "
            f"registered twice. Give {family.__name__} another architecture, or call "
            "unregister_family first to replace it"
        )
    _REGISTRY[family.architecture] = family
    return family


def unregister_family(architecture: str) -> type[LVLMFamily]:
    """Remove and return the family registered for ``architecture`` (``KeyError`` if none)."""
    if architecture not in _REGISTRY:
        raise KeyError(f"no family is registered for architecture {architecture!r}")
    return _REGISTRY.pop(architecture)


def registered_families() -> dict[str, type[LVLMFamily]]:
    """A copy of the registry: architecture -> family class, in registration order."""
    return dict(_REGISTRY)


def supported_architectures() -> tuple[str, ...]:
    """Registered architectures HookedLVLM loads (refused families left out)."""
    return tuple(a for a, f in _REGISTRY.items() if f.unsupported is None)


def _architecture(config) -> str:
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else type(config).__name__


def family_of(config) -> type[LVLMFamily]:
    """The registered family class of an HF config (by ``config.architectures[0]``).

    Raises:
        ValueError: an architecture no family is registered for.
        NotImplementedError: a known family that cannot be supported (the reason is
            in the message).
    """
    arch = _architecture(config)
    family = _REGISTRY.get(arch)
    if family is None:
        raise ValueError(
            f"unsupported architecture {arch!r}: HookedLVLM loads {supported_architectures()}. "
            "Check that the checkpoint is a LLaVA-style vision-language model and that its "
            "config.json sets `architectures`, or register a family for it with "
            "tl_lvlm.families.register_family"
        )
    if family.unsupported is not None:
        raise NotImplementedError(f"{family.name} ({arch}) is not supported: {family.unsupported}")
    return family
