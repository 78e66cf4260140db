"""The whole system on one machine: each role in its own process, on loopback.

`unwall demo`, `unwall bench` and the integration tests all use this, so what they run is
exactly what a deployment runs: `python -m unwall ROLE ...` processes talking over sockets.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult

import aiohttp
from aiohttp import web

from unwall.egress.identity import generate_identity, save_identity
from unwall.wire import sealed

log = logging.getLogger("unwall.local")

LOOPBACK = "127.0.0.1"
TEST_PAGE = (
    b"<!doctype html><html><head><title>unwall test page</title></head>"
    b"<body><h1>It works.</h1><p>This page came through unwall.</p></body></html>\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RoleFailed(Exception):
    pass


@dataclass
class RoleProcess:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode if self.process.returncode is not None else -1


@dataclass
class LocalBridge:
    """Broker, egress, volunteers and a client as separate processes on loopback."""

    workdir: Path
    broker_port: int = field(default_factory=free_port)
    egress_port: int = field(default_factory=free_port)
    socks_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    broker_answer_timeout: float = 10.0
    #: where broker and egress listen, and the ICE host address of clients and volunteers
    #: (a test-net address of a namespace's veth when a browser in that namespace takes part)
    host: str = LOOPBACK
    roles: list[RoleProcess] = field(default_factory=list)
    pin: str = ""
    #: options before the role on every role's command line (e.g. `--log-destinations`)
    global_args: tuple[str, ...] = ()
    #: the secret broker and egress share (tickets, reports), in their environment
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _counter: int = 0

    @property
    def broker_url(self) -> str:
        return f"http://{self.host}:{self.broker_port}"

    @property
    def egress_url(self) -> str:
        return f"ws://{self.host}:{self.egress_port}/v1/relay"

    @property
    def key_dir(self) -> Path:
        return self.workdir / "egress-keys"

    def make_key(self) -> str:
        if not (self.key_dir / "egress-key.pem").exists():
            save_identity(generate_identity(), self.key_dir)
        from unwall.egress.identity import load_identity

        self.pin = load_identity(self.key_dir).pin
        return self.pin

    async def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> RoleProcess:
        self._counter += 1
        log_path = self.workdir / f"{self._counter:02d}-{name}.log"
        handle = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "unwall",
            *self.global_args,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env={**os.environ, "UNWALL_REPORT_SECRET": self.secret, **(env or {})},
        )
        handle.close()
        role = RoleProcess(name, process, log_path)
        self.roles.append(role)
        return role

    async def start_broker(
        self, extra: tuple[str, ...] = (), port: int | None = None, wait: bool = True
    ) -> RoleProcess:
        """A broker on `port` (default: `broker_port`, the one clients and volunteers use);
        `wait` for its health to answer 200."""
        port = port or self.broker_port
        role = await self.spawn(
            "broker",
            "broker",
            "--listen",
            f"{self.host}:{port}",
            "--answer-timeout",
            str(self.broker_answer_timeout),
            "--egress-url",
            self.egress_url,
            *extra,
        )
        if wait:
            await self._wait_http(role, f"http://{self.host}:{port}/v1/health")
        else:
            await self._wait_port(role, port)
        return role

    async def start_egress(
        self, allow: tuple[str, ...] = ("127.0.0.0/8",), extra: tuple[str, ...] = ()
    ) -> RoleProcess:
        self.make_key()
        # The sites here listen on any port: the harness widens the default 80,443.
        args = ["egress", "--listen", f"{self.host}:{self.egress_port}", "--ports", "all"]
        args += extra
        if "--report-to" not in extra:  # our broker: reports, and clients' inner requests
            # (plain HTTP on this machine, perhaps to a namespace's address: it carries a
            # signature, never the secret)
            args += ["--report-to", self.broker_url, "--report-over-http"]
        args += ["--key-dir", str(self.key_dir)]
        for network in allow:
            args += ["--allow", network]
        role = await self.spawn("egress", *args)
        await self._wait_http(role, f"http://{self.host}:{self.egress_port}/v1/health")
        return role

    def volunteers(self) -> list[RoleProcess]:
        return [r for r in self.roles if r.name == "volunteer" and r.process.returncode is None]

    async def busiest_volunteer(self, sample: float = 0.3) -> RoleProcess:
        """The running volunteer using the most CPU: the one carrying the traffic."""
        candidates = self.volunteers()
        before = {role.pid: cpu_seconds(role.pid) for role in candidates}
        await asyncio.sleep(sample)
        return max(candidates, key=lambda role: cpu_seconds(role.pid) - before[role.pid])

    async def start_volunteer(
        self, capacity: int = 8, extra: tuple[str, ...] = (), broker: str | None = None
    ) -> RoleProcess:
        return await self.spawn(
            "volunteer",
            "volunteer",
            "--broker",
            broker or self.broker_url,
            "--egress",
            self.egress_url,
            "--capacity",
            str(capacity),
            "--host-address",
            self.host,
            *extra,
        )

    async def start_client(
        self,
        pin: str | None = None,
        wait_ready: bool = True,
        extra: tuple[str, ...] = (),
        socks_port: int | None = None,
        http_port: int | None = None,
        broker: str | None = None,
    ) -> RoleProcess:
        socks_port = socks_port or self.socks_port
        role = await self.spawn(
            "client", *self.client_args(pin, extra, socks_port, http_port, broker)
        )
        await self._wait_port(role, socks_port)
        if wait_ready:
            await self.wait_log(role, "tunnel ready", timeout=60)
        return role

    def client_args(
        self,
        pin: str | None = None,
        extra: tuple[str, ...] = (),
        socks_port: int | None = None,
        http_port: int | None = None,
        broker: str | None = None,
    ) -> list[str]:
        """A client's command line from its role on (`client --broker ...`)."""
        return [
            "client",
            "--broker",
            broker or self.broker_url,
            "--pin",
            pin or self.pin,
            # its offers sealed to the key of the brokers holding our secret
            "--broker-key",
            sealed.public_key_text(self.secret),
            "--socks",
            f"{LOOPBACK}:{socks_port or self.socks_port}",
            "--http",
            f"{LOOPBACK}:{http_port or self.http_port}",
            "--host-address",
            self.host,
            # Its status page on a port of its own (several clients may run here at once),
            # unless the caller names one.
            *(() if "--page" in extra else ("--page", f"{LOOPBACK}:0")),
            *extra,
        ]

    async def wait_log(self, role: RoleProcess, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in role.log_path.read_text(errors="replace"):
                return
            if role.process.returncode is not None:
                raise RoleFailed(f"{role.name} exited:\n{role.log_tail()}")
            await asyncio.sleep(0.05)
        raise RoleFailed(f"{role.name} did not log {text!r} in {timeout} s:\n{role.log_tail()}")

    async def _wait_port(self, role: RoleProcess, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if role.process.returncode is not None:
                raise RoleFailed(f"{role.name} exited:\n{role.log_tail()}")
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RoleFailed(f"{role.name} did not listen on {port} in {timeout} s:\n{role.log_tail()}")

    async def _wait_http(self, role: RoleProcess, url: str, timeout: float = 30.0) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if role.process.returncode is not None:
                    raise RoleFailed(f"{role.name} exited:\n{role.log_tail()}")
                try:
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RoleFailed(f"{role.name} did not answer {url} in {timeout} s:\n{role.log_tail()}")

    async def start_all(self, volunteers: int = 1) -> None:
        await self.start_broker()
        await self.start_egress()
        for _ in range(volunteers):
            await self.start_volunteer()
        await self.start_client()

    async def stop_all(self) -> None:
        await asyncio.gather(*(role.stop() for role in reversed(self.roles)))


@contextlib.asynccontextmanager
async def local_bridge(workdir: Path | None = None, **kwargs: object) -> AsyncIterator[LocalBridge]:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unwall-")))
        bridge = LocalBridge(workdir=workdir, **kwargs)  # type: ignore[arg-type]
        try:
            yield bridge
        finally:
            await bridge.stop_all()


# -- a web site to fetch -------------------------------------------------------------------


class DemoSite:
    """A local HTTP server: a page, deterministic blobs, and an upload sink."""

    def __init__(self, blob_dir: Path) -> None:
        self.blob_dir = blob_dir
        self.uploads: list[tuple[int, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def blob(self, size: int) -> tuple[Path, str]:
        """A file of `size` pseudo-random bytes and its sha256."""
        path = self.blob_dir / f"blob-{size}"
        if not path.exists():
            digest = hashlib.sha256()
            with path.open("wb") as handle:
                seed = hashlib.sha256(str(size).encode()).digest()
                block = b"".join(hashlib.sha512(seed + bytes([i])).digest() for i in range(256))
                written = 0
                counter = 0
                while written < size:
                    chunk = bytes(b ^ (counter & 0xFF) for b in block[:64]) + block[64:]
                    chunk = chunk[: size - written]
                    handle.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    counter += 1
            (self.blob_dir / f"blob-{size}.sha256").write_text(digest.hexdigest())
        return path, (self.blob_dir / f"blob-{size}.sha256").read_text()

    async def start(self) -> int:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/", self._page)
        app.router.add_get("/blob/{size}", self._blob)
        app.router.add_post("/upload", self._upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self.port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=TEST_PAGE, content_type="text/html")

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        if not 0 < size <= 1 << 30:
            raise web.HTTPBadRequest(text="size out of range\n")
        path, _ = self.blob(size)
        rate = int(request.query.get("rate", "0"))
        if rate <= 0:
            return web.FileResponse(path)
        # Paced: `rate` bytes per second, for transfers that must last a while.
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        step = max(1024, rate // 20)
        started = time.monotonic()
        sent = 0
        with path.open("rb") as handle:
            while chunk := handle.read(step):
                await response.write(chunk)
                sent += len(chunk)
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()
        return response

    async def _upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
        self.uploads.append((size, digest.hexdigest()))
        return web.json_response({"size": size, "sha256": digest.hexdigest()})


# -- fetching through the proxies ----------------------------------------------------------


async def socks5_open(
    proxy_port: int, host: str, port: int, proxy_host: str = LOOPBACK
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A minimal SOCKS5 client (remote name resolution). Raises ConnectionError with the code."""
    reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
    writer.write(b"\x05\x01\x00")
    if await reader.readexactly(2) != b"\x05\x00":
        writer.close()
        raise ConnectionError("SOCKS5 proxy refused no-auth")
    try:
        ip = ipaddress.ip_address(host)
        address = bytes([1 if ip.version == 4 else 4]) + ip.packed
    except ValueError:
        name = host.encode("idna")
        address = b"\x03" + bytes([len(name)]) + name
    writer.write(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
    head = await reader.readexactly(4)
    if head[1] != 0:
        writer.close()
        raise ConnectionError(f"SOCKS5 reply {head[1]:#04x}")
    skip = {1: 4, 4: 16}.get(head[3])
    if skip is None:
        skip = (await reader.readexactly(1))[0]
    await reader.readexactly(skip + 2)
    return reader, writer


@dataclass
class Download:
    """A download through the SOCKS5 proxy, watched chunk by chunk."""

    status: int = 0
    size: int = 0
    sha256: str = ""
    #: (monotonic time, total bytes so far) for every chunk read
    progress: list[tuple[float, int]] = field(default_factory=list)

    def stalls_after(self, moments: list[float], window: float = 5.0) -> list[float]:
        """For each moment (a kill), the longest pause in the data within `window` after
        it: from the last byte before the outage to the first byte after it. (The first
        byte after the kill itself may still come from buffers along the way.)"""
        times = [t for t, _ in self.progress]
        stalls = []
        for moment in moments:
            first = bisect.bisect_right(times, moment)
            last = bisect.bisect_right(times, moment + window)
            if 0 < first < len(times):
                stalls.append(
                    max(times[j] - times[j - 1] for j in range(first, max(last, first + 1)))
                )
        return stalls


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def download_via_socks(
    proxy_port: int, url: str, watch: Download | None = None, timeout: float = 300.0
) -> Download:
    """GET an http:// URL through SOCKS5, hashing the body and noting when each chunk came."""
    from urllib.parse import urlsplit

    result = watch or Download()
    parts = urlsplit(url)
    reader, writer = await socks5_open(proxy_port, parts.hostname or "", parts.port or 80)
    try:
        async with asyncio.timeout(timeout):
            writer.write(
                f"GET {_target(parts)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            result.status = int(head.split(b" ", 2)[1])
            digest = hashlib.sha256()
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
                result.size += len(chunk)
                result.progress.append((time.monotonic(), result.size))
            result.sha256 = digest.hexdigest()
    finally:
        writer.close()
    return result


async def fetch_via_socks(proxy_port: int, url: str) -> tuple[int, bytes, float]:
    """GET an http:// URL through the SOCKS5 proxy: (status, body, seconds to first byte)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    started = time.monotonic()
    reader, writer = await socks5_open(proxy_port, host, port)
    writer.write(
        f"GET {_target(parts)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    first = await reader.read(1)
    ttfb = time.monotonic() - started
    rest = await reader.read()
    writer.close()
    response = first + rest
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body, ttfb


async def fetch_via_http_proxy(proxy_port: int, url: str) -> tuple[int, bytes]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(url, proxy=f"http://{LOOPBACK}:{proxy_port}") as response,
    ):
        return response.status, await response.read()


# -- unwall demo ---------------------------------------------------------------------------


async def demo(
    socks: tuple[str, int],
    http: tuple[str, int],
    *,
    check: bool,
    page: tuple[str, int] = (LOOPBACK, 8119),
) -> int:
    print("unwall demo: starting broker, egress, volunteer and client on this machine ...")
    with tempfile.TemporaryDirectory(prefix="unwall-demo-") as tmp:
        workdir = Path(tmp)
        bridge = LocalBridge(workdir=workdir, socks_port=socks[1], http_port=http[1])
        site = DemoSite(workdir)
        try:
            for port, flag, what in (
                (socks[1], "socks", "SOCKS5"),
                (http[1], "http", "HTTP proxy"),
                (page[1], "page", "the client's status page"),
            ):
                if not _port_free(port):
                    print(
                        f"unwall demo: port {port} ({what}) is in use; pick another with "
                        f"--{flag} 127.0.0.1:PORT",
                        file=sys.stderr,
                    )
                    return 1
            await site.start()
            log.warning(
                "demo mode: the egress may reach loopback destinations (127.0.0.0/8); "
                "a real egress refuses them"
            )
            await bridge.start_broker()
            await bridge.start_egress()
            await bridge.start_volunteer()
            page_url = f"http://{page[0]}:{page[1]}/"
            await bridge.start_client(
                extra=("--page", f"{page[0]}:{page[1]}", "--self-test-url", site.url + "/")
            )
            status, body, ttfb = await fetch_via_socks(bridge.socks_port, site.url + "/")
            ok = status == 200 and body == TEST_PAGE
            if not ok:
                print(f"unwall demo: FAILED: fetched status {status}, {len(body)} bytes")
                return 1
            print(
                f"fetched {site.url}/ through the bridge (SOCKS5): HTTP {status}, "
                f"{len(body)} bytes, first byte after {ttfb * 1000:.0f} ms"
            )
            status, body = await fetch_via_http_proxy(bridge.http_port, site.url + "/")
            if status != 200 or body != TEST_PAGE:
                print(
                    f"unwall demo: FAILED: via the HTTP proxy: status {status}, {len(body)} bytes"
                )
                return 1
            print(f"fetched {site.url}/ through the bridge (HTTP proxy): HTTP {status}")
            async with (
                aiohttp.ClientSession() as session,
                session.get(page_url + "status.json") as response,
            ):
                shown = (await response.json())["state"]
            if shown != "connected":
                print(f"unwall demo: FAILED: the client's page says {shown!r}, not connected")
                return 1
            print(f"the client's status page at {page_url} says: connected")
            if check:
                print("unwall demo --check: OK")
                return 0
            _print_usage(bridge, site, page_url)
            await asyncio.Event().wait()
            return 0
        except RoleFailed as exc:
            print(f"unwall demo: FAILED: {exc}", file=sys.stderr)
            return 1
        except (OSError, asyncio.IncompleteReadError, aiohttp.ClientError) as exc:
            print(f"unwall demo: FAILED: fetching the test page: {exc}", file=sys.stderr)
            for role in bridge.roles:
                print(f"--- {role.name} log ---\n{role.log_tail()}", file=sys.stderr)
            return 1
        finally:
            print("unwall demo: shutting down ...")
            await bridge.stop_all()
            await site.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the proxies' own listeners do: a port in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _print_usage(bridge: LocalBridge, site: DemoSite, page_url: str) -> None:
    print(
        f"""
Open these two pages in a browser:
  {page_url:<30}  the client's status page: what a censored user sees
  {bridge.broker_url + "/":<30}  the broker's page with the volunteer widget: what a
  {"":<30}  volunteer sees (flip its switch to become a bridge)

unwall is running on this machine:
  SOCKS5 proxy  127.0.0.1:{bridge.socks_port}   (names are resolved at the egress)
  HTTP proxy    127.0.0.1:{bridge.http_port}
  broker        {bridge.broker_url}
  egress        {bridge.egress_url}  (pin {bridge.pin})

Try it:
  curl --socks5-hostname 127.0.0.1:{bridge.socks_port} {site.url}/
  curl --proxy http://127.0.0.1:{bridge.http_port} {site.url}/
A browser: set its SOCKS5 proxy to 127.0.0.1 port {bridge.socks_port} with "proxy DNS" on,
or its HTTP/HTTPS proxy to 127.0.0.1 port {bridge.http_port}.
In this demo the egress only reaches this machine; a real egress reaches the internet.

Press Ctrl-C to stop.""",
        flush=True,
    )
