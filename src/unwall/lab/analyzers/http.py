"""HTTP/1.x over TCP: the request line and the host the client asks for."""

from __future__ import annotations

from .analyzer import FlowAnalyzer
from .reader import Malformed
from .reassembly import MAX_BUFFER, StreamPrefix

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")
_REQUEST_STARTS = tuple(f"{method} ".encode() for method in METHODS)
_LONGEST_START = max(len(start) for start in _REQUEST_STARTS)


class HttpAnalyzer(FlowAnalyzer):
    """Reads the head of the client's first request (up to the blank line).

    Findings: `request` ("GET /path HTTP/1.1") and `host` (lower case, without the port),
    or `no-host` when the request names none. The host comes from the request target when
    it is in absolute form ("GET http://news.example/") or authority form ("CONNECT
    news.example:443"), as a proxy reads it, and from the Host header otherwise.
    """

    name = "http"

    def __init__(self) -> None:
        super().__init__()
        self._stream = StreamPrefix()
        self._method_seen = False

    def _inspect(self, payload: bytes, from_client: bool) -> list[tuple[str, str]]:
        if not from_client:
            return []
        searched = max(len(self._stream) - 3, 0)
        self._stream.append(payload)
        if not self._method_seen:
            start = self._stream.head(_LONGEST_START)
            if not any(s.startswith(start) or start.startswith(s) for s in _REQUEST_STARTS):
                raise Malformed("does not start with an HTTP method")
            self._method_seen = any(start.startswith(s) for s in _REQUEST_STARTS)
        end = _head_end(self._stream, searched)
        if end < 0:
            if self._stream.full:
                raise Malformed(f"no end of the request head within {MAX_BUFFER} bytes")
            return []
        self._finish()
        return _describe_head(self._stream.head(end))


def _head_end(stream: StreamPrefix, start: int) -> int:
    """Where the blank line after the head starts (-1: not yet); bare LF line ends are
    accepted, as lenient servers accept them."""
    ends = [i for i in (stream.find(b"\r\n\r\n", start), stream.find(b"\n\n", start)) if i >= 0]
    return min(ends) if ends else -1


def _describe_head(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Malformed("not an HTTP/1.x request line")
    method, target, _version = parts
    host = _target_authority(method, target)
    if host is None:
        for line in lines[1:]:
            field, colon, value = line.partition(":")
            if colon and field.strip().lower() == "host":
                host = value.strip()
                break
    pairs = [("request", lines[0])]
    host = _host_only(host) if host else ""
    pairs.append(("host", host) if host else ("no-host", ""))
    return pairs


def _target_authority(method: str, target: str) -> str | None:
    if method == "CONNECT":
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isalpha():
        return rest.split("/", 1)[0].split("?", 1)[0]
    return None


def _host_only(authority: str) -> str:
    """ "user@News.Example.:8080" -> "news.example", "[2001:db8::1]:80" -> "2001:db8::1"."""
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    host = host.lower()
    return host[:-1] if host.endswith(".") and len(host) > 1 else host
