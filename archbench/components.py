"""One shape for every name -> component table: builders, necks, heads, activations, forms.

A ``ComponentRegistry`` maps names to things of one kind, in registration order.
Registering a name twice raises; looking up a name that is not there raises one
``ArchbenchError`` naming the kind and the choices. Registration works as a call
or as a decorator::

    NECKS = ComponentRegistry[Callable[..., nn.Module]]("neck")

    @NECKS.register("csp_pan")
    class CSPPAN(nn.Module): ...

    NECKS.get("csp_pan")      # the class
    NECKS.get("cps_pan")      # ArchbenchError: unknown neck 'cps_pan'; choose from csp_pan, ...

Importing this module imports nothing heavy (the variant list and the CLI use it
without torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from archbench.errors import ArchbenchError

T = TypeVar("T")


class ComponentRegistry(Generic[T]):
    """Components of one kind by name; duplicates raise, unknown names raise one clear error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str, item: T | None = None) -> T | Callable[[T], T]:
        """Register ``item`` under ``name``; without ``item``, a decorator that does."""
        if item is None:
            def decorator(obj: T) -> T:
                return self.register(name, obj)

            return decorator
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = item
        return item

    def get(self, name: str) -> T:
        """The component called ``name``; ``ArchbenchError`` naming the choices otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ArchbenchError(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}"

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ComponentRegistry({self.kind!r}: {', '.join(self._entries)})"
