"""The one logging setup of every unwall command, and what a log line may name.

By default no log line names a destination (host, address or port a user asked for) or the
address of a client or a volunteer: logs get copied, kept and seized, and such a line can
tell who went where. Code that would name one writes `destination(host, port)` or
`address(value)`, which say only that there was one, unless the operator turned on
`--log-destinations` for debugging.
"""

from __future__ import annotations

import logging
import sys

_show = False


def log_destinations(enabled: bool) -> None:
    """Let log lines name destinations and addresses (`--log-destinations`)."""
    global _show
    _show = enabled


def showing() -> bool:
    """Whether log lines may name destinations and addresses."""
    return _show


def destination(host: str, port: int) -> str:
    return f"{host}:{port}" if _show else "a destination"


def address(value: object) -> str:
    return str(value) if _show else "an address"


def setup_logging(verbose: int = 0, quiet: bool = False, destinations: bool = False) -> None:
    log_destinations(destinations)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays out of the user's console unless asked for (-vv).
    for noisy in ("aiortc", "aioice", "aioquic", "quic", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
