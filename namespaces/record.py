"""Value classes for the runtime's hot path, without the dataclasses module.

Why not @dataclass: every `pinnace-oci` verb is a new process, and on the
development VM `import dataclasses` costs ~13 ms (it imports inspect, which
imports ast, dis, tokenize...) and each decorated class ~0.3 ms more; runc
does a whole `start` in 5 ms. So the classes that create/start/delete load
list their fields in `__slots__` and write their own typed `__init__`; these
bases give them what @dataclass would generate besides: == over the fields
and a readable repr (and a hash for the immutable ones).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self


class Record:
    """Fields are the leaf class's __slots__; equal when the type and every field are."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable, like @dataclass(eq=True)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in type(self).__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    def replace(self, **changes: object) -> Self:
        """A copy with some fields changed (dataclasses.replace)."""
        new = object.__new__(type(self))
        for name in type(self).__slots__:
            object.__setattr__(
                new, name, changes.pop(name) if name in changes else getattr(self, name)
            )
        if changes:
            raise TypeError(f"{type(self).__name__} has no field {sorted(changes)[0]!r}")
        return new

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in type(self).__slots__)
        return f"{type(self).__name__}({inner})"


class FrozenRecord(Record):
    """A Record that is never changed after __init__ (by convention, as with frozen
    dataclasses that nobody bypasses), so it can be hashed and used as a key."""

    __slots__: tuple[str, ...] = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash((type(self).__name__, self._fields()))
