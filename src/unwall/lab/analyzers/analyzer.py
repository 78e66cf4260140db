"""What every analyzer is: the `Analyzer` interface, the `Finding` it reports, and the
plumbing they share (`FlowAnalyzer`).

An analyzer is a sans-IO object for one flow. The box feeds it the transport payload of
each packet it inspects (TCP segment data or one UDP datagram) and gets findings back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from .reader import Malformed

log = logging.getLogger("unwall.lab.analyzers")


@dataclass(frozen=True)
class Finding:
    """One fact an analyzer learned about a flow, e.g. `Finding("tls", "sni", "news.example")`.

    `analyzer` is the analyzer's `name`; `key` says what was seen; `value` is what it was
    (may be empty when the key says it all, as in `("tls", "no-sni", "")`).
    """

    analyzer: str
    key: str
    value: str

    def __str__(self) -> str:
        return (
            f"{self.analyzer} {self.key}={self.value}"
            if self.value
            else f"{self.analyzer} {self.key}"
        )


class Analyzer(Protocol):
    """Inspects the first packets of one flow.

    `feed` never raises on bad input: bytes that are not this analyzer's protocol give `[]`.
    Each distinct finding is reported once per flow. Once `done` is true, feeding more is
    pointless (the analyzer has said all it will, or has decided this is not its protocol);
    the box may stop handing this flow's packets to it.
    """

    @property
    def name(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def feed(self, payload: bytes, *, from_client: bool) -> list[Finding]: ...


class FlowAnalyzer:
    """Base for the analyzers here: the never-raise guard, give-up state and de-duplication.

    Subclasses implement `_inspect`, returning `(key, value)` pairs; they raise `Malformed`
    to give up on the flow, and call `_finish()` once they have nothing more to say.
    """

    name = "flow"

    def __init__(self) -> None:
        self._done = False
        self._reported: set[tuple[str, str]] = set()

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, payload: bytes, *, from_client: bool) -> list[Finding]:
        if self._done or not payload:
            return []
        try:
            pairs = self._inspect(bytes(payload), from_client)
        except Malformed:
            self._done = True
            return []
        except Exception:
            # A bug here must cost us this one flow, never the box: the box inspects
            # whatever the censored network sends. The traceback goes to the log.
            log.warning(
                "%s analyzer failed on a %d-byte payload; no longer inspecting this flow",
                self.name,
                len(payload),
                exc_info=True,
            )
            self._done = True
            return []
        findings = []
        for key, value in pairs:
            if (key, value) not in self._reported:
                self._reported.add((key, value))
                findings.append(Finding(self.name, key, value))
        return findings

    def _finish(self) -> None:
        self._done = True

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        raise NotImplementedError


def display_name(raw: bytes) -> str:
    """A host name as findings carry it: lower case, no trailing dot, odd bytes escaped."""
    name = raw.decode("ascii", "backslashreplace").lower()
    return name[:-1] if name.endswith(".") and len(name) > 1 else name
