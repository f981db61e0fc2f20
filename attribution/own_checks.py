"""A mark for public entry points that check their own arguments."""

from __future__ import annotations

from typing import TypeVar

_F = TypeVar("_F")


def checks_own_arguments(fn: _F) -> _F:
    """Mark a function (or a dataclass validated in ``__post_init__``) whose arguments it
    refuses itself, with a ``ValueError`` / ``TypeError`` that says how to fix them.

    Runtime type checkers skip what carries ``__no_type_check__`` (the test suite's jaxtyping
    import hook does: at call time for a function, at class creation for a dataclass's
    ``__init__``), so misuse meets that message rather than a generic type-check error, while
    static type checkers and IDEs still read the annotations (they would ignore them under
    ``typing.no_type_check``). The price: ``typing.get_type_hints`` of a marked object is
    empty. Place it directly above the ``def`` or ``class``, under any other decorator: the
    hook's wrapper of a function sits there. Everything the function calls is still checked.
    """
    fn.__no_type_check__ = True
    return fn
