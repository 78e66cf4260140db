"""TLS over TCP: the server name, ALPN and JA3 and JA4 fingerprints of the ClientHello."""

from __future__ import annotations

from .analyzer import FlowAnalyzer
from .clienthello import ClientHello, parse_handshake_client_hello
from .reader import Malformed
from .reassembly import MAX_BUFFER, StreamPrefix

CONTENT_HANDSHAKE = 22
RECORD_HEADER = 5
# RFC 8446 allows a record up to 2^14 bytes of plaintext; a ClientHello is plaintext.
MAX_RECORD = 1 << 14


class TlsAnalyzer(FlowAnalyzer):
    """Reads the client's first TLS records until the ClientHello is complete.

    The ClientHello may arrive split across TCP segments and across several handshake
    records (record fragmentation is a known trick against censors; this box is not fooled
    by it). Findings: `sni` (or `no-sni`), `alpn` ("h2,http/1.1"), `ech` if the client
    offers Encrypted ClientHello, `client-hello` (the JA3 string), `ja3` (its md5) and `ja4`
    (FoxIO's: sorted, so that a browser that shuffles its extensions keeps one).
    """

    name = "tls"

    def __init__(self) -> None:
        super().__init__()
        self._stream = StreamPrefix()
        self._needed = 1  # parse again once this many bytes are buffered

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if not from_client:
            return []
        # Decide on the first bytes, so that non-TLS flows cost next to nothing.
        if not self._stream and (
            payload[0] != CONTENT_HANDSHAKE or (len(payload) > 1 and payload[1] != 3)
        ):
            raise Malformed("not a TLS handshake record")
        self._stream.append(payload)
        if len(self._stream) < self._needed:
            return []
        hello, self._needed = _client_hello(self._stream.data())
        if hello is None:
            if self._stream.full:
                raise Malformed(f"no ClientHello within the first {MAX_BUFFER} bytes")
            return []
        self._finish()
        return [
            *hello.describe(),
            ("client-hello", hello.ja3()),
            ("ja3", hello.ja3_md5()),
            ("ja4", hello.ja4("tcp")),
        ]


def _client_hello(stream: bytes) -> tuple[ClientHello | None, int]:
    """Walk the handshake records at the start of the client's stream.

    Returns the ClientHello once complete, else None and the stream length at which a new
    attempt can make progress.
    """
    handshake = b""
    position = 0
    while True:
        end = position + RECORD_HEADER
        if len(stream) < end:
            return None, end
        content_type, major, minor = stream[position : position + 3]
        length = int.from_bytes(stream[position + 3 : end], "big")
        if content_type != CONTENT_HANDSHAKE or major != 3 or minor > 4:
            raise Malformed("a record before the ClientHello's end is not a TLS handshake record")
        if not 0 < length <= MAX_RECORD:
            raise Malformed(f"handshake record of {length} bytes")
        end += length
        if end > MAX_BUFFER:
            raise Malformed(f"the ClientHello runs past the first {MAX_BUFFER} bytes")
        if len(stream) < end:
            return None, end
        handshake += stream[position + RECORD_HEADER : end]
        position = end
        if len(handshake) >= 4 and 4 + int.from_bytes(handshake[1:4], "big") > MAX_BUFFER:
            raise Malformed(f"a ClientHello larger than {MAX_BUFFER} bytes")
        hello = parse_handshake_client_hello(handshake)
        if hello is not None:
            return hello, 0
