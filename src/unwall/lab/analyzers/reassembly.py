"""Putting a message back together from pieces, within a fixed budget.

The box looks at the first few kilobytes of a flow and no more: a ClientHello or a request
head that does not fit in `MAX_BUFFER` bytes makes the analyzer give up on the flow.
"""

from __future__ import annotations

from .reader import Malformed

MAX_BUFFER = 16 * 1024


class StreamPrefix:
    """The first bytes of one direction of a TCP flow (segments assumed in order).

    Bytes beyond `cap` are dropped: an analyzer that still needs more once `full` is true
    gives up.
    """

    __slots__ = ("_cap", "_data")

    def __init__(self, cap: int = MAX_BUFFER) -> None:
        self._cap = cap
        self._data = bytearray()

    def append(self, data: bytes) -> None:
        room = self._cap - len(self._data)
        self._data += data[:room]

    @property
    def full(self) -> bool:
        return len(self._data) >= self._cap

    def __len__(self) -> int:
        return len(self._data)

    def data(self) -> bytes:
        return bytes(self._data)

    def head(self, count: int) -> bytes:
        return bytes(self._data[:count])

    def find(self, needle: bytes, start: int = 0) -> int:
        return self._data.find(needle, start)


class FragmentAssembler:
    """Pieces of one byte stream that arrive at offsets, possibly out of order and
    overlapping (QUIC CRYPTO frames, DTLS handshake fragments)."""

    __slots__ = ("_cap", "_pieces", "_prefix")

    def __init__(self, cap: int = MAX_BUFFER) -> None:
        self._cap = cap
        self._pieces: dict[int, bytes] = {}
        self._prefix = b""

    def add(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self._cap:
            raise Malformed(f"data at offset {offset} lies past the {self._cap}-byte budget")
        if data and len(data) > len(self._pieces.get(offset, b"")):
            self._pieces[offset] = data

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first gap."""
        prefix = bytearray(self._prefix)
        for offset in sorted(self._pieces):
            if offset > len(prefix):
                break
            end = offset + len(self._pieces[offset])
            if end > len(prefix):
                prefix += self._pieces[offset][len(prefix) - offset :]
        self._prefix = bytes(prefix)
        self._pieces = {o: d for o, d in self._pieces.items() if o + len(d) > len(prefix)}
        return self._prefix
