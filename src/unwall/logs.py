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
import time

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


class Throttle:
    """At most one log line per `every` seconds about one thing; `allow` also says how many
    were left out since the last line that was let through."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last = -every
        self._left_out = 0

    def allow(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._last < self.every:
            self._left_out += 1
            return False, 0
        self._last, left_out, self._left_out = now, self._left_out, 0
        return True, left_out


#: At most one line per this many seconds for each kind of malformed request.
MALFORMED_EVERY = 10.0


class MalformedRequests(logging.Filter):
    """aiohttp's server logs every request it cannot parse (a 9,000-byte header, a bad
    request line) at ERROR, with a traceback and the sender's address: a stranger could
    fill the disk with them, and they name people. Here each becomes one WARNING line
    without a traceback or an address, at most one per kind every MALFORMED_EVERY
    seconds, with the count of those left out. Other errors in request handling keep
    their traceback (they are our bugs), without the address."""

    def __init__(self) -> None:
        super().__init__()
        self._throttles: dict[str, Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Error handling request"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if not _is_malformed_request(exc):
            if not _show:
                record.msg, record.args = "Error handling request", ()
            return True
        kind = type(exc).__name__
        allowed, left_out = self._throttles.setdefault(kind, Throttle(MALFORMED_EVERY)).allow()
        if not allowed:
            return False
        code = getattr(exc, "code", 400)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused a malformed HTTP request (%s, answered %s)%s"
        more = f"; {left_out} more in the last {MALFORMED_EVERY:.0f} s" if left_out else ""
        record.args = (kind, code, more)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _is_malformed_request(exc: BaseException | None) -> bool:
    try:
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:  # pragma: no cover (aiohttp is a dependency)
        return False
    return isinstance(exc, HttpProcessingError)


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
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, MalformedRequests)]
    server.addFilter(MalformedRequests())
