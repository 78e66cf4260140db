"""The client's local proxies: SOCKS5 and HTTP, each connection one stream through the tunnel.

The parsers are sans-IO (`socks5`, `httpproxy`); this module only moves bytes. Every way a
request can fail ends in the reply the application understands (a SOCKS5 reply code or an
HTTP status), never in a hang or a silently closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from unwall import logs
from unwall.client import httpproxy, socks5
from unwall.client.tunnel import Tunnel, TunnelUnavailable
from unwall.transport import quic
from unwall.transport.pipe import pipe
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
        return await self._listen(self._serve_socks, host, port)

    async def start_http(self, host: str, port: int) -> asyncio.Server:
        return await self._listen(self._serve_http, host, port)

    async def _listen(self, handler: Handler, host: str, port: int) -> asyncio.Server:
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
        early = parser.trailing_data
        if isinstance(request, httpproxy.ForwardRequest):
            early = request.head + early
        try:
            stream = await open_target(self.tunnel, request.host, request.port, early)
        except StreamOpenFailed as exc:
            log.info("HTTP proxy %s: %s", logs.destination(request.host, request.port), _why(exc))
            status = httpproxy.http_status_for(exc.status)
            message = f"unwall could not reach {request.host}:{request.port}: {exc.reason}"
            await _respond_and_close(writer, httpproxy.error_response(status, message))
            return
        if isinstance(request, httpproxy.TunnelRequest):
            writer.write(httpproxy.connect_established())
        await pipe(reader, writer, stream)


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
