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

DEFAULT_TTL: Final = 24 * 3600.0


def turn_password(secret: str, username: str) -> str:
    """coturn's REST API password for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class TurnIssuer:
    """Mints credentials for ``urls`` valid ``ttl`` seconds from when they are asked for.

    A credential must outlive the relay allocation it opens (clients refresh allocations
    with the same credential), hence a day by default, as the REST API draft suggests.
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
        if not self.ttl > 0:
            raise ValueError("the TURN credential lifetime must be positive")

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
