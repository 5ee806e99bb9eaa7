"""The few C types and the libc access the syscall layer needs, made on `_ctypes` directly.

`import ctypes` costs ~2 ms on the development VM beyond its C module: its
__init__ builds some forty type classes, function-type caches and endian
variants. Every `pinnace-oci create`, `exec` and `run` makes raw syscalls, and
ctypes itself is a thin Python layer over `_ctypes`, so the handful of types
used here are declared the way ctypes declares them (a `_type_` code on a
`_SimpleCData` subclass) and functions are looked up the way CDLL does (a
CFuncPtr made from a name and an object holding the dlopen handle).

Only for LP64 Linux (x86_64, aarch64): `long` and pointers are 64 bits.
Modules that need more of ctypes (libseccomp's binding) import ctypes.
"""

from __future__ import annotations

import _ctypes
import os
from _ctypes import Array, Structure, addressof, byref, get_errno, sizeof

__all__ = [
    "Array",
    "Library",
    "Structure",
    "addressof",
    "byref",
    "c_char",
    "c_int",
    "c_long",
    "c_size_t",
    "c_uint",
    "c_uint32",
    "c_uint64",
    "c_ulong",
    "c_ushort",
    "c_void_p",
    "char_buffer",
    "get_errno",
    "sizeof",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # type-check as ctypes' own classes (mypy knows their special cases)
    from ctypes import c_char, c_int, c_long, c_uint, c_ulong, c_ushort, c_void_p
else:

    def _simple(name: str, code: str) -> type:
        """A C scalar type as ctypes declares it: a _SimpleCData subclass with a type code."""
        return type(name, (_ctypes._SimpleCData,), {"_type_": code, "__module__": __name__})

    c_int = _simple("c_int", "i")
    c_uint = _simple("c_uint", "I")
    c_long = _simple("c_long", "l")
    c_ulong = _simple("c_ulong", "L")
    c_ushort = _simple("c_ushort", "H")
    c_char = _simple("c_char", "c")
    c_void_p = _simple("c_void_p", "P")

c_uint32 = c_uint
c_uint64 = c_ulong
c_size_t = c_ulong
if sizeof(c_long) != 8 or sizeof(c_void_p) != 8:
    raise ImportError("namespaces.ctypes_lite supports LP64 platforms only")


def char_buffer(init: bytes | int) -> Array[c_char]:
    """A C char array: a copy of `init` (exactly its length, NULs included), or `init`
    zeroed bytes (ctypes.create_string_buffer with an explicit size)."""
    if isinstance(init, int):
        return (c_char * init)()
    return (c_char * len(init)).from_buffer_copy(init)


class _CFunction(_ctypes.CFuncPtr):
    """A C function of the library; errno saved for get_errno(); returns int by default."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class _PyFunction(_ctypes.CFuncPtr):
    """As _CFunction, but called holding the GIL (ctypes.PyDLL's functions)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class Library:
    """A shared library's functions as attributes: ctypes.CDLL(name, use_errno=True), or
    PyDLL with `holds_gil`. No name: dlopen(NULL), the C library the interpreter already
    runs on. OSError when the library cannot be loaded."""

    def __init__(self, name: str | None = None, *, holds_gil: bool = False) -> None:
        # CFuncPtr((name, library)) reads the handle from the library's `_handle`
        self._handle = _ctypes.dlopen(name, os.RTLD_LOCAL)  # type: ignore[arg-type]
        self._function_type = _PyFunction if holds_gil else _CFunction

    def __getattr__(self, name: str) -> _ctypes.CFuncPtr:
        if name.startswith("__"):
            raise AttributeError(name)
        fn = self._function_type((name, self))  # type: ignore[arg-type]  # duck-typed CDLL
        setattr(self, name, fn)
        return fn
