"""How an egress signs its reports to the brokers (POST /v1/egress/carried, protocol.md §3).

The secret brokers and egresses share never travels: a report carries

    Authorization: unwall-hmac t=<Unix seconds>, mac=<M>
    M = base64url (unpadded) of HMAC-SHA256(K, "unwall report" NUL t NUL body)

with K = HMAC-SHA256(secret, "unwall report key v1"), a key of its own (the ticket key is
another: unwall.wire.ticket). A broker accepts a report made within WINDOW seconds; a
replayed one credits nothing new, as each offer is credited once. Whoever reads a report
on its way (a front that terminates TLS) learns neither the secret nor a way to mint
tickets. Pure functions, no I/O; the clock is an argument.
"""

from __future__ import annotations

import base64
import hmac
import re
from typing import Final

SCHEME: Final = "unwall-hmac"
#: a report older or newer than this (clock skew included) is refused
WINDOW: Final = 300.0

_HEADER = re.compile(rf"{SCHEME} t=([0-9]{{1,12}}), mac=([A-Za-z0-9_-]{{43}})")


def report_key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), b"unwall report key v1", "sha256").digest()


def _mac(key: bytes, issued: int, body: bytes) -> str:
    digest = hmac.new(key, b"unwall report\0%d\0" % issued + body, "sha256").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(key: bytes, body: bytes, now: float) -> str:
    """The Authorization header of a report whose body is `body`."""
    issued = int(now)
    return f"{SCHEME} t={issued}, mac={_mac(key, issued, body)}"


def verify(key: bytes, header: str, body: bytes, now: float) -> bool:
    """Whether `header` signs `body` with our key, recently. Any other header (a bearer
    token, bytes that are not UTF-8, garbage) is simply not a valid signature."""
    match = _HEADER.fullmatch(header)
    if match is None:
        return False
    issued = int(match[1])
    if abs(now - issued) > WINDOW:
        return False
    return hmac.compare_digest(match[2], _mac(key, issued, body))
