"""Copy bytes between a TCP connection and a QUIC stream, both ways, with backpressure.

Both ends of the tunnel do this: the client between the application's socket and its
stream, the egress between the stream and the destination. A FIN becomes a half-close on
the other side; an error on either side aborts the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from unwall.transport.quic import QuicStream, SessionClosed, StreamReset
from unwall.transport.ratelimit import TokenBucket

READ_SIZE = 64 * 1024


@dataclass
class PipeResult:
    bytes_up: int = 0  # TCP -> stream
    bytes_down: int = 0  # stream -> TCP
    error: str | None = None


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: QuicStream,
    bucket: TokenBucket | None = None,
    meter: Callable[[int, int], None] | None = None,
) -> PipeResult:
    """Copy until both directions end. `bucket` paces both directions together (shared by
    every stream of one session at the egress, `--session-rate`); `meter` is told of the
    bytes as they go: (TCP to stream, stream to TCP)."""
    result = PipeResult()

    async def tcp_to_stream() -> None:
        while data := await reader.read(READ_SIZE):
            if bucket is not None:
                await bucket.take(len(data))
            await stream.write(data)
            result.bytes_up += len(data)
            if meter is not None:
                meter(len(data), 0)
        stream.write_eof()

    async def stream_to_tcp() -> None:
        while data := await stream.read():
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            result.bytes_down += len(data)
            if meter is not None:
                meter(0, len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    up = asyncio.create_task(tcp_to_stream())
    down = asyncio.create_task(stream_to_tcp())
    try:
        pending: set[asyncio.Task[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    continue
                result.error = _describe(error)
                if isinstance(error, StreamReset | SessionClosed):
                    writer.transport.abort()
                else:
                    stream.reset()
                    writer.transport.abort()
                for other in pending:
                    other.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                pending = set()
                break
    finally:
        for task in (up, down):
            if not task.done():
                task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        stream._session.stream_finished(stream)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return result


def _describe(error: BaseException) -> str:
    if isinstance(error, StreamReset):
        return "reset by the other end of the tunnel"
    if isinstance(error, SessionClosed):
        return str(error)
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, BrokenPipeError):
        return "connection closed while writing"
    return f"{type(error).__name__}: {error}"
