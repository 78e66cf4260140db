"""Bounds-checked reading of binary protocol fields.

Every parser in this package reads hostile bytes. They all read through `ByteReader`, which
raises `Malformed` (and nothing else) when a field runs past the end, so one `except` at
the analyzer's edge covers every truncation and every lying length field.
"""

from __future__ import annotations


class Malformed(ValueError):
    """The bytes are not (or no longer) the protocol an analyzer looks for."""


class ByteReader:
    """Reads big-endian fields from `data[start:end]`, front to back."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else min(end, len(data))

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def _take(self, count: int) -> int:
        start = self._pos
        if count < 0 or start + count > self._end:
            raise Malformed(f"field of {count} bytes runs past the end at offset {start}")
        self._pos = start + count
        return start

    def skip(self, count: int) -> None:
        self._take(count)

    def skip_zeros(self) -> None:
        """Move past a run of zero bytes (QUIC PADDING frames) in one step."""
        rest = self._data[self._pos : self._end]
        self._pos = self._end - len(rest.lstrip(b"\x00"))

    def uint(self, size: int) -> int:
        start = self._take(size)
        return int.from_bytes(self._data[start : start + size], "big")

    def u8(self) -> int:
        start = self._take(1)
        return self._data[start]

    def u16(self) -> int:
        return self.uint(2)

    def u24(self) -> int:
        return self.uint(3)

    def u32(self) -> int:
        return self.uint(4)

    def take(self, count: int) -> bytes:
        start = self._take(count)
        return self._data[start : start + count]

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def vector(self, length_size: int) -> bytes:
        """A length-prefixed field (TLS `opaque x<..>`), without its prefix."""
        return self.take(self.uint(length_size))

    def sub(self, length_size: int) -> ByteReader:
        """A reader over the next length-prefixed field; this reader moves past it."""
        count = self.uint(length_size)
        start = self._take(count)
        return ByteReader(self._data, start, start + count)

    def varint(self) -> int:
        """A QUIC variable-length integer (RFC 9000, section 16)."""
        first = self.u8()
        size = 1 << (first >> 6)
        value = first & 0x3F
        if size > 1:
            start = self._take(size - 1)
            value = (value << (8 * (size - 1))) | int.from_bytes(
                self._data[start : start + size - 1], "big"
            )
        return value

    def u16_list(self, length_size: int) -> tuple[int, ...]:
        """A length-prefixed list of 16-bit values (cipher suites, groups, SRTP profiles)."""
        body = self.vector(length_size)
        if len(body) % 2:
            raise Malformed("a list of 16-bit values has an odd length")
        return tuple(int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2))
