"""The client's local proxies: SOCKS5 and HTTP, each connection one stream through the tunnel.

The parsers are sans-IO (`socks5`, `httpproxy`); this module only moves bytes. Every way a
request can fail ends in the reply the application understands (a SOCKS5 reply code or an
HTTP status), never in a hang or a silently closed socket; the one exception is a web page's
request to the HTTP proxy itself, closed without a word so that the page cannot tell a proxy
listens. A plain-HTTP request is one exchange: the connection closes after its response
(`httpproxy.ForwardExchange`).

Both listen where they are told; on an address other than loopback they are open proxies to
whoever reaches it (no authentication), which is logged as a warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from unwall import logs
from unwall.client import httpproxy, socks5
from unwall.client.tunnel import Tunnel, TunnelUnavailable
from unwall.transport import quic
from unwall.transport.pipe import READ_SIZE, pipe
from unwall.transport.quic import QuicStream, read_header
from unwall.wire.streamheader import (
    HeaderError,
    StreamReply,
    StreamReplyDecoder,
    StreamStatus,
    StreamTarget,
)

log = logging.getLogger("unwall.client")

REQUEST_TIMEOUT = 30.0  # for the application to send its SOCKS/HTTP request
REPLY_TIMEOUT = 30.0  # for the egress to answer a stream (it dials within 10 s)
#: after a forwarded response, how long the application may take to close its side: what it
#: sends meanwhile is read and dropped, so that closing does not reset the connection (RFC
#: 9112 section 9.6) under the response it has not read yet
LINGER = 2.0


class StreamOpenFailed(Exception):
    def __init__(self, status: StreamStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _why(exc: StreamOpenFailed) -> str:
    """The refusal for a log line: the egress's reason names the destination (and what it
    resolved to), so by default only the kind of refusal."""
    return exc.reason if logs.showing() else exc.status.name.lower().replace("_", " ")


async def open_target(tunnel: Tunnel, host: str, port: int, early: bytes = b"") -> QuicStream:
    """Open a stream to host:port through the egress; raise StreamOpenFailed on refusal."""
    try:
        header = StreamTarget(host, port).encode()
    except ValueError as exc:
        raise StreamOpenFailed(StreamStatus.BAD_HEADER, str(exc)) from exc
    try:
        stream = await tunnel.open_stream()
    except (TunnelUnavailable, quic.SessionClosed) as exc:
        raise StreamOpenFailed(
            StreamStatus.NETWORK_UNREACHABLE, f"no tunnel to the egress: {exc}"
        ) from exc
    try:
        await stream.write(header + early)
        reply = await asyncio.wait_for(_read_reply(stream), REPLY_TIMEOUT)
    except TimeoutError:
        stream.reset()
        stream._session.stream_finished(stream)
        raise StreamOpenFailed(StreamStatus.TIMED_OUT, "the egress did not answer") from None
    except (quic.SessionClosed, quic.StreamReset, HeaderError, asyncio.IncompleteReadError) as exc:
        stream.reset()
        stream._session.stream_finished(stream)
        raise StreamOpenFailed(StreamStatus.GENERAL_FAILURE, f"tunnel error: {exc}") from exc
    if reply.status != StreamStatus.OK:
        stream.reset()
        stream._session.stream_finished(stream)
        raise StreamOpenFailed(reply.status, reply.reason or reply.status.name.lower())
    return stream


async def _read_reply(stream: QuicStream) -> StreamReply:
    try:
        return await read_header(stream, StreamReplyDecoder(), "the egress's reply")
    except EOFError as exc:
        raise HeaderError(str(exc)) from None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LocalProxies:
    """The SOCKS5 and HTTP listeners; tracks its connection tasks for a clean shutdown."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []

    @property
    def open_connections(self) -> int:
        """Applications' connections being served now."""
        return len(self._tasks)

    async def start_socks(self, host: str, port: int) -> asyncio.Server:
        return await self._listen("SOCKS5", self._serve_socks, host, port)

    async def start_http(self, host: str, port: int) -> asyncio.Server:
        return await self._listen("HTTP", self._serve_http, host, port)

    async def _listen(self, name: str, handler: Handler, host: str, port: int) -> asyncio.Server:
        async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                # Shutting down. End normally: Python 3.11's start_server callback calls
                # task.exception() on a cancelled task and logs a spurious traceback.
                writer.transport.abort()
            except Exception:  # a bug must not kill the listener; say so once
                log.exception("proxy connection failed unexpectedly")
                writer.transport.abort()
            finally:
                self._tasks.discard(task)

        server = await asyncio.start_server(track, host, port, limit=256 * 1024)
        self._servers.append(server)
        exposed = exposed_addresses(server)
        if exposed:
            log.warning(
                "the %s proxy listens on %s, which other machines can reach: anyone who can "
                "connect to it can use your tunnel, with no password, and what they do goes "
                "out through your egress; listen on 127.0.0.1 unless that is what you want",
                name,
                ", ".join(exposed),
            )
        return server

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # SOCKS5
    async def _serve_socks(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = socks5.Socks5ServerConnection()
        try:
            request = await asyncio.wait_for(_read_socks(parser, reader, writer), REQUEST_TIMEOUT)
        except socks5.Socks5Error as exc:
            # The message may quote the requested name: only when asked.
            log.info("SOCKS5: %s", exc if logs.showing() else "refused a malformed request")
            with contextlib.suppress(ConnectionError):
                writer.write(parser.data_to_send())
                await writer.drain()
            await _close(writer)
            return
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            await _close(writer)
            return
        if request is None:
            await _close(writer)
            return
        try:
            stream = await open_target(
                self.tunnel, request.host, request.port, parser.trailing_data
            )
        except StreamOpenFailed as exc:
            log.info("SOCKS5 %s: %s", logs.destination(request.host, request.port), _why(exc))
            with contextlib.suppress(ConnectionError):
                writer.write(parser.reply(socks5.reply_for_status(exc.status)))
                await writer.drain()
            await _close(writer)
            return
        try:
            writer.write(parser.reply(socks5.ReplyCode.SUCCEEDED))
        except ConnectionError:
            stream.reset()
            stream._session.stream_finished(stream)
            return
        await pipe(reader, writer, stream)

    # HTTP
    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = httpproxy.HttpProxyRequestParser()
        try:
            request = await asyncio.wait_for(_read_http(parser, reader), REQUEST_TIMEOUT)
        except httpproxy.HttpProxyError as exc:
            if not exc.answer:
                log.debug("HTTP proxy: closed a web page's request to the proxy itself")
                writer.transport.abort()
                return
            # The message may quote the requested target: only when asked.
            shown = exc.message if logs.showing() else f"refused a malformed request ({exc.status})"
            log.info("HTTP proxy: %s", shown)
            await _respond_and_close(writer, httpproxy.error_response(exc.status, exc.message))
            return
        except TimeoutError:
            await _respond_and_close(
                writer, httpproxy.error_response(408, "request head not received in time")
            )
            return
        except ConnectionError:
            await _close(writer)
            return
        if request is None:
            await _close(writer)
            return
        exchange: httpproxy.ForwardExchange | None = None
        if isinstance(request, httpproxy.ForwardRequest):
            exchange = parser.exchange()
            try:
                early = request.head + exchange.data_to_origin()
            except httpproxy.HttpProxyError as exc:
                await _respond_and_close(writer, httpproxy.error_response(exc.status, exc.message))
                return
        else:
            early = parser.trailing_data
        try:
            stream = await open_target(self.tunnel, request.host, request.port, early)
        except StreamOpenFailed as exc:
            log.info("HTTP proxy %s: %s", logs.destination(request.host, request.port), _why(exc))
            status = httpproxy.http_status_for(exc.status)
            message = f"unwall could not reach {request.host}:{request.port}: {exc.reason}"
            await _respond_and_close(writer, httpproxy.error_response(status, message))
            return
        if exchange is not None:
            where = logs.destination(request.host, request.port)
            await _exchange(reader, writer, stream, exchange, where)
            return
        writer.write(httpproxy.connect_established())
        await pipe(reader, writer, stream)


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: QuicStream,
    exchange: httpproxy.ForwardExchange,
    where: str,
) -> None:
    """Carry one forwarded request and its response, then close both ends. `where` names
    the destination for log lines (or not, see unwall.logs)."""
    up = asyncio.create_task(_request_up(reader, stream, exchange))
    down = asyncio.create_task(_response_down(stream, writer, exchange))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up in done:
            up.result()  # raises if the application broke off its request
        await down  # an application that half-closes after its request still gets the answer
        if not exchange.response_complete:
            raise httpproxy.HttpProxyError(502, "the site closed the connection before its end")
    except (httpproxy.HttpProxyError, quic.StreamReset, quic.SessionClosed, ConnectionError) as exc:
        stream.reset()
        if isinstance(exc, httpproxy.HttpProxyError):
            # The message may quote what the site or the application sent: only when asked.
            shown = exc.message if logs.showing() else f"broken HTTP ({exc.status})"
            log.info("HTTP proxy %s: %s", where, shown)
        if isinstance(exc, httpproxy.HttpProxyError) and not exchange.response_started:
            await _respond_and_close(writer, httpproxy.error_response(exc.status, exc.message))
        else:
            writer.transport.abort()
    else:
        # An origin that ignores Connection: close keeps its connection open: end it.
        if stream.at_eof:
            stream.write_eof()
        else:
            stream.reset()
        await _linger(writer, up)
    finally:
        up.cancel()
        down.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        stream._session.stream_finished(stream)
        await _close(writer)


async def _request_up(
    reader: asyncio.StreamReader, stream: QuicStream, exchange: httpproxy.ForwardExchange
) -> None:
    """The request's body to the origin; then read on, dropping what comes (a pipelined
    request), to learn when the application goes: its FIN goes on as one, as on a tunnel, so
    that an origin holding a long poll for an application that left can end it."""
    while data := await reader.read(READ_SIZE):
        exchange.receive_from_application(data)
        if out := exchange.data_to_origin():
            await stream.write(out)
    exchange.receive_from_application(b"")
    if out := exchange.data_to_origin():
        await stream.write(out)
    stream.write_eof()


async def _response_down(
    stream: QuicStream, writer: asyncio.StreamWriter, exchange: httpproxy.ForwardExchange
) -> None:
    """The response to the application, up to its end (or the origin's)."""
    while not exchange.response_complete:
        data = await stream.read()
        exchange.receive_from_origin(data)
        if out := exchange.data_to_application():
            writer.write(out)
            await writer.drain()
        if not data:
            return


async def _linger(writer: asyncio.StreamWriter, reading: asyncio.Task[None]) -> None:
    """Half-close and give the application LINGER seconds to close its side first."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(asyncio.shield(reading), LINGER)


def exposed_addresses(server: asyncio.Server) -> list[str]:
    """The addresses `server` listens on that are not loopback, as host:port."""
    exposed = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        if not ipaddress.ip_address(host).is_loopback:
            exposed.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return exposed


async def _read_socks(
    parser: socks5.Socks5ServerConnection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> socks5.ConnectRequest | None:
    while True:
        request = parser.next_event()
        out = parser.data_to_send()
        if out:
            writer.write(out)
            await writer.drain()
        if request is not None:
            return request
        data = await reader.read(4096)
        if not data:
            return None
        parser.receive_data(data)


async def _read_http(
    parser: httpproxy.HttpProxyRequestParser, reader: asyncio.StreamReader
) -> httpproxy.TunnelRequest | httpproxy.ForwardRequest | None:
    while True:
        request = parser.next_event()
        if request is not None:
            return request
        data = await reader.read(16384)
        if not data:
            return None
        parser.receive_data(data)


async def _respond_and_close(writer: asyncio.StreamWriter, response: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(response)
        await writer.drain()
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
