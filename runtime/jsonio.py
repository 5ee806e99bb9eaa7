"""JSON for the verbs' hot path: the standard library's own C codec, without `json`.

`import json` costs ~7 ms here, almost all of it `re` (and `enum` under it),
which json.decoder and json.encoder import to compile regexes that only the
pure-Python fallbacks use. The C scanner and encoder in `_json` are what
`json.loads`/`json.dumps` run anyway for the plain calls made here, so
state.json, the sync channel and the log lines use them directly. Errors
are json's own: the C scanner raises json.JSONDecodeError (a ValueError).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _ScannerContext:
    """The attributes `_json.make_scanner` reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _unserializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]  # duck-typed context


def loads(data: bytes | str) -> Any:
    """json.loads for UTF-8 bytes or str."""
    text = data.decode() if isinstance(data, bytes | bytearray) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        from json import JSONDecodeError

        raise JSONDecodeError("Expecting value", text, exc.value) from None
    if text[end:].strip(_WHITESPACE):
        from json import JSONDecodeError

        raise JSONDecodeError("Extra data", text, end)
    return value


def dumps(obj: object, indent: int | None = None) -> str:
    """json.dumps(obj, indent=indent) with its other defaults (ASCII; ", " and ": ")."""
    if indent is not None:
        return _indented(obj, " " * indent, "\n")
    # A fresh markers dict per call (it detects circular references), as json.dumps does.
    encode = _json.make_encoder(
        {}, _unserializable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(encode(obj, 0))


def _indented(obj: object, step: str, newline: str) -> str:
    """json.dumps's layout with indent (the C encoder has none): one item per line."""
    inner = newline + step
    if isinstance(obj, dict) and obj:
        items = (f"{dumps(str(k))}: {_indented(v, step, inner)}" for k, v in obj.items())
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(obj, list | tuple) and obj:
        return (
            "[" + inner + ("," + inner).join(_indented(v, step, inner) for v in obj) + newline + "]"
        )
    return dumps(obj)
