"""Short-lived TURN credentials for volunteers: coturn's REST API scheme (`use-auth-secret`).

The broker and the TURN server share a secret and nothing else: the broker mints a username
``"<expiry unix time>:<random id>"`` and its password ``base64(HMAC-SHA1(secret, username))``;
coturn (`--use-auth-secret --static-auth-secret SECRET`) recomputes the password and refuses
a username whose time has passed. No per-user state, and a leaked credential dies by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from unwall.wire.broker import TurnServer

#: How long a credential opens new allocations (seconds): ten minutes by default, an hour
#: at most. See TurnIssuer.
DEFAULT_TTL: Final = 600.0
MAX_TTL: Final = 3600.0


def turn_password(secret: str, username: str) -> str:
    """coturn's REST API password for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnIssuer:
    """Mints credentials for ``urls`` valid ``ttl`` seconds from when they are asked for.

    A credential is used within seconds of its issue: it comes in the poll answer that
    carries the offer it is for, and the volunteer allocates its relay as it answers. So it
    need not live long, and the shorter it lives the less a leaked or harvested one is
    worth. What it costs: coturn (4.6, measured in tests/integration/test_turn_abuse.py)
    checks a credential's expiry only when an allocation is made, and keeps refreshing an
    allocation it made with the key it then cached, so a call outlives its credential; a
    TURN server that checks the expiry on every Refresh ends the relay at expiry, and the
    client moves to its warm path (docs/protocol.md section 4). Ten minutes by default,
    an hour at most (the REST API draft's day is what let a harvested credential be
    worth keeping).
    """

    secret: str
    urls: tuple[str, ...]
    ttl: float = DEFAULT_TTL

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the TURN secret must not be empty")
        if not self.urls:
            raise ValueError("a TURN secret needs at least one TURN URL (--turn-url)")
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"{url!r} is not a turn: or turns: URL")
        if not 0 < self.ttl <= MAX_TTL:
            raise ValueError(
                f"the TURN credential lifetime must be positive and at most {MAX_TTL:.0f} s"
            )

    def issue(self, now: float) -> TurnServer:
        """Fresh credentials; ``now`` is Unix time (time.time())."""
        username = f"{int(now + self.ttl)}:{secrets.token_urlsafe(9)}"
        return TurnServer(self.urls, username, turn_password(self.secret, username))


def make_issuer(
    secret: str | None, urls: Sequence[str], ttl: float = DEFAULT_TTL
) -> TurnIssuer | None:
    """The issuer for the broker's flags, or None when it hands out no TURN credentials."""
    if secret is None:
        if urls:
            raise ValueError("--turn-url needs --turn-secret (the coturn static-auth-secret)")
        return None
    return TurnIssuer(secret, tuple(urls), ttl)
