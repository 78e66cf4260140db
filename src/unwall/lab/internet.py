"""The lab's free world: its DNS zone and its web sites (one process, many addresses).

Names live under `.test` (RFC 2606): news.test (the blocked news site), open.test (the
allowed control site) and any *.canary.test (names used once, for the privacy audit).
Sites answer HTTP on port 80 and HTTPS on 443 with a certificate from the lab's own CA.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import QTYPE, RR, A, DNSRecord

from unwall.lab.probe import PROBE_PORT, EchoServer
from unwall.lab.topology import LabAddresses


def blob(size: int) -> bytes:
    """Deterministic content of `size` bytes (the tests compare sha256)."""
    seed = hashlib.sha256(str(size).encode()).digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(2, "big")).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


def make_ca(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A lab CA and one server certificate for `names`; returns (ca, cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unwall lab CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "lab-ca.pem", directory / "site-cert.pem", directory / "site-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class Zone(asyncio.DatagramProtocol):
    """An authoritative server for the lab's names (and nothing else: no recursion)."""

    def __init__(self, addresses: LabAddresses) -> None:
        self.addresses = addresses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on garbage
            return
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        address = self.addresses.zone.get(name)
        if address is None and name.endswith(".canary.test"):
            address = self.addresses.canary
        if address is None:
            reply.header.rcode = 3  # NXDOMAIN
        elif query.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=60))
        self.transport.sendto(reply.pack(), addr)


def site_app(name: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        host = request.headers.get("Host", name).split(":")[0]
        return web.Response(
            text=f"<!doctype html><title>{host}</title><h1>{host}</h1><p>served by {name}</p>\n",
            content_type="text/html",
        )

    async def blob_handler(request: web.Request) -> web.Response:
        size = int(request.match_info["size"])
        if not 0 < size <= 200_000_000:
            raise web.HTTPBadRequest(text="size out of range\n")
        return web.Response(body=blob(size), content_type="application/octet-stream")

    async def volunteer_page(request: web.Request) -> web.Response:
        # A page of another site that embeds the widget, for Firefox: firefox_in's driver
        # (WebDriver BiDi) clicks the switch in the widget's frame and posts what the
        # frame shows to /report.
        from unwall.browser import VOLUNTEER_PAGE

        widget = f"http://{LabAddresses().broker}:8080/widget/unwall-widget.js"
        body = VOLUNTEER_PAGE.format(widget=json.dumps(widget))
        return web.Response(text=body, content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/blob/{size}", blob_handler)
    app.router.add_get("/volunteer", volunteer_page)
    app.router.add_post("/report", report)
    return app


def front_app(backends: dict[str, str]) -> web.Application:
    """A CDN edge: terminates TLS for its own name, forwards by the Host header inside.

    This is what makes domain fronting work: the censor sees a connection to the CDN's
    address with the CDN's name in the SNI; the Host header naming the broker is encrypted.
    """
    import aiohttp

    app = web.Application(client_max_size=1 << 20)

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        host = request.headers.get("Host", "").split(":")[0].lower()
        backend = backends.get(host)
        if backend is None:
            return web.Response(status=421, text=f"this front does not serve {host or '?'}\n")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        async with app["session"].request(
            request.method,
            backend + request.rel_url.path_qs,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as response:
            return web.Response(
                status=response.status,
                body=await response.read(),
                headers={k: v for k, v in response.headers.items() if k.lower() == "content-type"},
            )

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def run_internet(addresses: LabAddresses, state: Path) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Zone(addresses), local_addr=(addresses.dns, 53))
    await loop.create_datagram_endpoint(EchoServer, local_addr=(addresses.open, PROBE_PORT))
    _, cert, key = make_ca(
        state / "pki", ["news.test", "open.test", "*.canary.test", "cdn.test", "turn.test"]
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    runners = []
    for name, address in (
        ("news.test", addresses.news),
        ("open.test", addresses.open),
        ("canary.test", addresses.canary),
    ):
        runner = web.AppRunner(site_app(name), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, address, 80).start()
        await web.TCPSite(runner, address, 443, ssl_context=tls).start()
        runners.append(runner)
    front = web.AppRunner(
        front_app({"broker.test": f"http://{addresses.broker}:8080"}), access_log=None
    )
    await front.setup()
    await web.TCPSite(front, addresses.front, 443, ssl_context=tls).start()
    runners.append(front)
    (state / "internet.ready").write_text("ok\n")
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()
