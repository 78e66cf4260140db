"""Fully encrypted traffic, as the Great Firewall told it apart in 2021-2023 (Wu et al.,
"How the Great Firewall of China Detects and Blocks Fully Encrypted Traffic", USENIX
Security 2023): the first TCP payload a client sends is judged, and it is exempt if any
of five rules holds; a connection none of them exempts was blocked.

- Ex1: the average number of set bits per byte is at most 3.4 or at least 4.6 (random
  bytes have about 4);
- Ex2: the first six bytes are printable ASCII (0x20-0x7e);
- Ex3: more than half of the bytes are printable ASCII;
- Ex4: more than 20 printable ASCII bytes in a row;
- Ex5: the bytes start like TLS (a record header: 0x16 or 0x17, 0x03, 0x00-0x09) or HTTP
  (a request method and a space).

The analyzer reports `fully-encrypted` (with the figures) or `exempt` (with the first rule
that holds, e.g. "ex5 tls"), once, for the first client payload of a TCP flow.
"""

from __future__ import annotations

from .analyzer import FlowAnalyzer

POPCOUNT_LOW = 3.4
POPCOUNT_HIGH = 4.6
PRINTABLE_PREFIX = 6
PRINTABLE_RUN = 20
HTTP_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"CONNECT ",
                b"PATCH ", b"TRACE ")  # fmt: skip


def _printable(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E


def exemption(payload: bytes) -> str | None:
    """The first of the five rules that exempts this first payload, or None."""
    bits = sum(byte.bit_count() for byte in payload) / len(payload)
    if bits <= POPCOUNT_LOW or bits >= POPCOUNT_HIGH:
        return f"ex1 {bits:.2f} bits set per byte"
    if len(payload) >= PRINTABLE_PREFIX and all(map(_printable, payload[:PRINTABLE_PREFIX])):
        return "ex2 printable first bytes"
    printable = sum(map(_printable, payload))
    if printable * 2 > len(payload):
        return f"ex3 {printable} of {len(payload)} bytes printable"
    run = longest = 0
    for byte in payload:
        run = run + 1 if _printable(byte) else 0
        longest = max(longest, run)
    if longest > PRINTABLE_RUN:
        return f"ex4 {longest} printable bytes in a row"
    if len(payload) >= 3 and payload[0] in (0x16, 0x17) and payload[1] == 3 and payload[2] <= 9:
        return "ex5 tls"
    if payload.startswith(HTTP_METHODS):
        return "ex5 http"
    return None


class FullyEncryptedAnalyzer(FlowAnalyzer):
    """Judges the first payload the client sends on a TCP flow (see the module)."""

    name = "fet"

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if not from_client:
            return []  # the server spoke first: the rule looks at the client's first bytes
        self._finish()
        reason = exemption(payload)
        if reason is not None:
            return [("exempt", reason)]
        bits = sum(byte.bit_count() for byte in payload) / len(payload)
        return [("fully-encrypted", f"{len(payload)} bytes, {bits:.2f} bits set per byte")]
