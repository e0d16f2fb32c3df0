"""Protocol-buffer text format from plain Python data: how ``config.pbtxt`` files are written.

Triton reads a model's configuration as a ``ModelConfig`` message in text format. Building it as
data (dicts, lists, numbers, strings) and serializing it in one place means every value is escaped
and typed the same way, and the configuration can be read back and compared as data.

Mapping of Python values to the text format:

- ``dict`` → a message field ``name { ... }`` (a nested message);
- ``list``/``tuple`` of scalars → ``name: [ a, b ]``; of dicts → ``name [ { ... }, { ... } ]``;
  an empty list is left out (a repeated field with no element);
- ``str`` → a quoted, escaped string; :class:`Enum` → a bare enum name (``TYPE_FP32``);
- ``bool`` → ``true``/``false``; ``int``/``float`` → a number (finite only);
- ``None`` → the field is left out.

A protobuf map field (Triton's ``parameters``) is a repeated message of ``key``/``value`` entries:
:func:`map_entries` turns a dict into that list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A message whose one-line form is at most this long is written on one line.
_INLINE = 100


class Enum(str):
    """An enum value, written bare (``data_type: TYPE_FP32``) rather than quoted."""

    def __new__(cls, name: str) -> Enum:
        if not _IDENT.match(name):
            raise ValueError(f"{name!r} is not an enum value name")
        return super().__new__(cls, name)


def map_entries(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict as the entries of a protobuf map field, in the dict's order."""
    return [{"key": k, "value": v} for k, v in mapping.items()]


def quote(text: str) -> str:
    """A string literal: UTF-8 bytes, with quotes, backslashes and non-printable bytes escaped."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} has no text-format literal here")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"{where}: cannot write a {type(value).__name__} in protobuf text format")


def _fields(message: Mapping[str, Any], where: str) -> list[str]:
    """One string per field (multi-line for long nested messages)."""
    out = []
    for name, value in message.items():
        if not isinstance(name, str) or not _IDENT.match(name):
            raise ValueError(f"{where}: {name!r} is not a field name")
        path = f"{where}.{name}" if where else name
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.append(f"{name} {_message(value, path)}")
        elif isinstance(value, (list, tuple)):
            if not value:
                continue
            if all(isinstance(v, Mapping) for v in value):
                items = [_message(v, f"{path}[{i}]") for i, v in enumerate(value)]
                out.append(f"{name} [\n" + ",\n".join(_indent(i) for i in items) + "\n]")
            elif any(isinstance(v, (Mapping, list, tuple)) for v in value):
                raise TypeError(f"{path}: a repeated field holds either messages or scalars, not both or lists")
            else:
                out.append(f"{name}: [ " + ", ".join(_scalar(v, path) for v in value) + " ]")
        else:
            out.append(f"{name}: {_scalar(value, path)}")
    return out


def _message(message: Mapping[str, Any], where: str) -> str:
    fields = _fields(message, where)
    inline = "{ " + " ".join(fields) + " }" if fields else "{ }"
    if len(inline) <= _INLINE and "\n" not in inline:
        return inline
    return "{\n" + "\n".join(_indent(f) for f in fields) + "\n}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def dumps(message: Mapping[str, Any]) -> str:
    """A top-level message (e.g. a Triton ``ModelConfig``) in text format, one field per line."""
    return "\n".join(_fields(message, "")) + "\n"
