"""Thrift's compact protocol, generically: enough to read and rewrite a parquet file's footer.

A parquet footer (`FileMetaData`) and each page header are thrift structs in the compact protocol
(https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md). This module
reads them without a schema, as a `Struct`: a list of `(field id, type, value)` in the order they
were written, and writes such a list back. Decoding and re-encoding a struct gives back the same
bytes, so fields this module knows nothing about survive a rewrite untouched
(`passthrough.py` changes only the offsets it must).

Values: integers for BYTE/I16/I32/I64, `bool`, `float` (DOUBLE), `bytes` (BINARY, strings
included), `(element type, [values])` for LIST and SET, `(key type, value type, [(k, v)])` for MAP,
a `Struct` for STRUCT.
"""

from __future__ import annotations

import struct as _struct
from typing import Any

BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)

Struct = list[tuple[int, int, Any]]


class ThriftError(ValueError):
    """Bytes that are not a well-formed compact-protocol struct."""


class Reader:
    """Reads compact-protocol values from `data` starting at `pos` (advanced as it reads)."""

    def __init__(self, data: bytes | memoryview, pos: int = 0, max_depth: int = 32) -> None:
        self.data = data
        self.pos = pos
        self.max_depth = max_depth

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise ThriftError("truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def _varint(self) -> int:
        shift = value = 0
        while True:
            b = self._byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 70:
                raise ThriftError("varint too long")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _value(self, ttype: int, depth: int) -> Any:
        if ttype in (BOOL_TRUE, BOOL_FALSE):  # a list element: one byte, 1 is true
            return self._byte() == BOOL_TRUE
        if ttype == BYTE:
            b = self._byte()
            return b - 256 if b > 127 else b
        if ttype in (I16, I32, I64):
            return self._zigzag()
        if ttype == DOUBLE:
            if self.pos + 8 > len(self.data):
                raise ThriftError("truncated")
            value = _struct.unpack_from("<d", self.data, self.pos)[0]
            self.pos += 8
            return value
        if ttype == BINARY:
            n = self._varint()
            if self.pos + n > len(self.data):
                raise ThriftError("truncated")
            value = bytes(self.data[self.pos : self.pos + n])
            self.pos += n
            return value
        if ttype in (LIST, SET):
            head = self._byte()
            size, etype = head >> 4, head & 0x0F
            if size == 15:
                size = self._varint()
            return (etype, [self._value(etype, depth + 1) for _ in range(size)])
        if ttype == MAP:
            size = self._varint()
            if size == 0:
                return (0, 0, [])
            kv = self._byte()
            ktype, vtype = kv >> 4, kv & 0x0F
            return (
                ktype,
                vtype,
                [(self._value(ktype, depth + 1), self._value(vtype, depth + 1)) for _ in range(size)],
            )
        if ttype == STRUCT:
            return self.struct(depth + 1)
        raise ThriftError(f"unknown type {ttype}")

    def struct(self, depth: int = 0) -> Struct:
        """The struct at the current position."""
        if depth > self.max_depth:
            raise ThriftError("nested too deep")
        fields: Struct = []
        last = 0
        while True:
            head = self._byte()
            if head == 0:
                return fields
            ttype, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self._zigzag()
            if ttype in (BOOL_TRUE, BOOL_FALSE):  # a field: the value is in the type
                fields.append((fid, BOOL_TRUE, ttype == BOOL_TRUE))
            else:
                fields.append((fid, ttype, self._value(ttype, depth)))
            last = fid


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def _varint(self, n: int) -> None:
        while n > 0x7F:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def _zigzag(self, n: int) -> None:
        self._varint((n << 1) ^ (n >> 63))

    def _value(self, ttype: int, value: Any) -> None:
        if ttype in (BOOL_TRUE, BOOL_FALSE):
            self.out.append(BOOL_TRUE if value else BOOL_FALSE)
        elif ttype == BYTE:
            self.out.append(value & 0xFF)
        elif ttype in (I16, I32, I64):
            self._zigzag(value)
        elif ttype == DOUBLE:
            self.out += _struct.pack("<d", value)
        elif ttype == BINARY:
            self._varint(len(value))
            self.out += value
        elif ttype in (LIST, SET):
            etype, items = value
            if len(items) < 15:
                self.out.append(len(items) << 4 | etype)
            else:
                self.out.append(0xF0 | etype)
                self._varint(len(items))
            for item in items:
                self._value(etype, item)
        elif ttype == MAP:
            ktype, vtype, items = value
            self._varint(len(items))
            if items:
                self.out.append(ktype << 4 | vtype)
                for k, v in items:
                    self._value(ktype, k)
                    self._value(vtype, v)
        elif ttype == STRUCT:
            self.struct(value)
        else:
            raise ThriftError(f"unknown type {ttype}")

    def struct(self, fields: Struct) -> None:
        last = 0
        for fid, ttype, value in fields:
            is_bool = ttype in (BOOL_TRUE, BOOL_FALSE)
            wire = (BOOL_TRUE if value else BOOL_FALSE) if is_bool else ttype
            delta = fid - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | wire)
            else:
                self.out.append(wire)
                self._zigzag(fid)
            if not is_bool:
                self._value(ttype, value)
            last = fid
        self.out.append(0)


def encode(fields: Struct) -> bytes:
    """The compact-protocol bytes of a struct."""
    writer = _Writer()
    writer.struct(fields)
    return bytes(writer.out)


def get(fields: Struct, fid: int, default: Any = None) -> Any:
    """The value of field `fid`, or `default` when the struct does not hold it."""
    for f, _, value in fields:
        if f == fid:
            return value
    return default


def with_field(fields: Struct, fid: int, ttype: int, value: Any) -> Struct:
    """A copy with field `fid` set (added in field-id order when it was absent)."""
    out = [f for f in fields if f[0] != fid]
    out.append((fid, ttype, value))
    out.sort(key=lambda f: f[0])
    return out


def without(fields: Struct, *fids: int) -> Struct:
    """A copy without the fields `fids`."""
    return [f for f in fields if f[0] not in fids]
