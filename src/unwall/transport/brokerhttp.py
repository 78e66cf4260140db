"""The seam for the broker channel's HTTP client: what speaks HTTPS to the broker or a front.

A censor logs every TLS ClientHello it sees. Python's `ssl` (through aiohttp) has a
ClientHello of its own: no GREASE, its own cipher list and extensions, no HTTP/2. One rule
on its JA4 would find every unwall client even when the WebRTC call that follows is a
browser's. So the client's requests to the broker go through `curl_cffi`, libcurl built
with BoringSSL and the TLS and HTTP/2 settings of a current Chrome ("chrome" engine). A
browser's own fetch() cannot do this job: it may not set the Host header, which domain
fronting needs, so the Chromium WebRTC engine uses the same client. The "python" engine
(aiohttp) is for volunteers, who are not behind the box, and for tests that need no
disguise.

Only this module imports curl_cffi; the rest of unwall sees :class:`BrokerHttp`.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

#: the engines, by name; the first is the client's default
ENGINES: Final = ("chrome", "python")
#: what curl_cffi is asked to be: its newest Chrome
IMPERSONATE: Final = "chrome"


class HttpFailed(Exception):
    """No answer came by this URL: the connection, TLS or the time limit failed."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str  # without parameters, lower case; "" when none was given
    body: bytes


class BrokerHttp(Protocol):
    """POSTs a body, returns the answer (at most `limit` bytes of its body)."""

    name: str

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        limit: int,
    ) -> HttpAnswer: ...

    async def aclose(self) -> None: ...


def open_http(engine: str = ENGINES[0], ca_file: str | None = None) -> BrokerHttp:
    """The broker channel's client for `engine` (one of :data:`ENGINES`), trusting the
    system's CAs (or only those in `ca_file`); aclose() it when done."""
    if engine == "chrome":
        return _CurlHttp(ca_file)
    if engine == "python":
        return _AiohttpHttp(ca_file)
    raise ValueError(f"unknown broker HTTP engine {engine!r}; known: {', '.join(ENGINES)}")


def from_session(session: aiohttp.ClientSession, ca_file: str | None = None) -> BrokerHttp:
    """The "python" engine on a session the caller owns (and closes)."""
    return _AiohttpHttp(ca_file, session)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class _AiohttpHttp:
    name = "python"

    def __init__(self, ca_file: str | None, session: aiohttp.ClientSession | None = None) -> None:
        self._ssl: ssl.SSLContext | bool = True
        if ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self._session = session
        self._owned = session is None

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        limit: int,
    ) -> HttpAnswer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout),
            ) as response:
                data = await response.content.read(limit)
                return HttpAnswer(response.status, _media_type(response.content_type), data)
        except TimeoutError as exc:
            raise HttpFailed("no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise HttpFailed(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None and self._owned:
            await self._session.close()
            self._session = None


#: curl's message, without its preamble and its pointer to the manual
_CURL_MESSAGE = re.compile(r"curl: \(\d+\) (.*?)(?:\. See https://curl\.se/\S*.*)?$", re.S)


def _curl_reason(exc: Exception) -> str:
    text = str(exc)
    found = _CURL_MESSAGE.search(text)
    return (found.group(1) if found else text).strip() or type(exc).__name__


class _CurlHttp:
    name = "chrome"

    def __init__(self, ca_file: str | None) -> None:
        self._ca_file = ca_file
        self._session: Any = None

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        limit: int,
    ) -> HttpAnswer:
        from curl_cffi.requests import AsyncSession
        from curl_cffi.requests.exceptions import RequestException, Timeout

        if self._session is None:
            self._session = AsyncSession(
                impersonate=IMPERSONATE,
                # a path is curl's CAINFO (curl_cffi's typing says bool; its code takes both)
                verify=self._ca_file if self._ca_file is not None else True,  # type: ignore[arg-type]
            )
        try:
            response = await self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=(connect_timeout, timeout),
                allow_redirects=False,
                stream=True,
            )
            try:
                data = bytearray()
                async for chunk in response.aiter_content():
                    data += chunk
                    if len(data) >= limit:
                        break
                return HttpAnswer(
                    response.status_code,
                    _media_type(response.headers.get("content-type")),
                    bytes(data[:limit]),
                )
            finally:
                await response.aclose()
        except Timeout as exc:
            raise HttpFailed("no answer in time") from exc
        except RequestException as exc:
            raise HttpFailed(_curl_reason(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
