"""Just enough of PHP `unserialize()` to read SendEmail's customvars (a flat array of scalars).

WHMCS decodes `customvars` as base64(serialize(array)); anything else is refused, like
WHMCS's `safe_unserialize` refuses objects.
"""

from __future__ import annotations

from typing import Any


class PhpFormatError(ValueError):
    pass


def php_unserialize(text: str) -> Any:
    data = text.encode("utf-8")
    value, pos = _value(data, 0)
    if pos != len(data):
        raise PhpFormatError("trailing data after the serialized value")
    return value


def _until(data: bytes, pos: int, stop: bytes) -> tuple[bytes, int]:
    end = data.find(stop, pos)
    if end < 0:
        raise PhpFormatError(f"expected {stop!r} after offset {pos}")
    return data[pos:end], end + len(stop)


def _value(data: bytes, pos: int) -> tuple[Any, int]:
    kind = data[pos : pos + 2]
    if kind == b"N;":
        return None, pos + 2
    if kind == b"b:":
        raw, pos = _until(data, pos + 2, b";")
        return raw == b"1", pos
    if kind == b"i:":
        raw, pos = _until(data, pos + 2, b";")
        return int(raw), pos
    if kind == b"d:":
        raw, pos = _until(data, pos + 2, b";")
        return raw.decode("ascii"), pos  # kept as text: the sandbox never turns money into a float
    if kind == b"s:":
        raw, pos = _until(data, pos + 2, b":")
        n = int(raw)
        if data[pos : pos + 1] != b'"' or data[pos + 1 + n : pos + 3 + n] != b'";':
            raise PhpFormatError("bad string length")
        return data[pos + 1 : pos + 1 + n].decode("utf-8"), pos + 3 + n
    if kind == b"a:":
        raw, pos = _until(data, pos + 2, b":{")
        out: dict[Any, Any] = {}
        for _ in range(int(raw)):
            key, pos = _value(data, pos)
            if isinstance(key, (dict, list)) or key is None:
                raise PhpFormatError("array keys must be strings or integers")
            out[key], pos = _value(data, pos)
        if data[pos : pos + 1] != b"}":
            raise PhpFormatError("unterminated array")
        return out, pos + 1
    raise PhpFormatError(f"unsupported serialized type {kind!r}")
