"""Issue 22, row 2: TURN that cannot be abused.

The broker hands TURN credentials only in its (rate-limited) poll answers, never in the
CORS-* `/v1/volunteer/config` anyone may fetch, and no cache keeps them. coturn, started from
the configuration unwall ships (src/unwall/broker/coturn.conf) on loopback, refuses a holder
of valid credentials every relay into loopback, private, link-local, CGNAT, metadata and the
other special-purpose addresses, IPv4 and IPv6, and any TCP relay; its secret is neither on
its command line nor in its log.

Only permissions are asked for (CreatePermission, Connect): nothing is sent to any peer, and
no public address is contacted. A public address's permission is asked for once, to show
that the denial is not of everything.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coturn import Coturn, coturn, require_coturn
from test_broker_http import serving
from turn_probe import TCP, UDP, TurnProbe

from unwall.broker.server import BrokerConfig
from unwall.broker.turn import MAX_TTL, TurnIssuer
from unwall.wire.broker import VolunteerPoll, decode_poll_response, encode

SECRET = "the-broker-and-coturn-share-this-one"
URLS = ("turn:203.0.113.5:3478", "turn:203.0.113.5:3478?transport=tcp")

# What a TURN server must never relay to (RFC 6890 / IANA special-purpose registries).
REFUSED_V4 = [
    "10.0.0.1", "192.168.1.1", "172.16.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.7",
    "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
]  # fmt: skip
REFUSED_V6 = [
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
    "64:ff9b::a9fe:a9fe", "100::1", "2001:db8::1", "2001::1", "2002:a00:1::1", "fec0::1",
    "ff02::1",
]  # fmt: skip
# Asked for a permission only (nothing is sent there): the denial is not of everything.
PUBLIC_V4 = "8.8.8.8"
PUBLIC_V6 = "2606:4700:4700::1111"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = _ipv6_loopback()


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn from the shipped configuration, opening no network of its own (not even
    loopback, which the tests' other TURN servers relay to)."""
    require_coturn()
    addresses = ("127.0.0.1", "::1") if IPV6 else ("127.0.0.1",)
    with coturn(
        tmp_path_factory.mktemp("coturn"),
        addresses,
        stun_only=False,
        auth_secret=SECRET,
        relay_addresses=addresses,
        allowed=(),
    ) as server:
        yield server


def _credentials(server: Coturn, ttl: float = 600) -> tuple[str, str]:
    issued = TurnIssuer(SECRET, (server.turn_url(),), ttl).issue(time.time())
    return issued.username, issued.credential


# -- the broker: credentials only where the rate limits are ----------------------------------


async def test_credentials_are_not_harvested_from_the_config_and_polls_are_limited() -> None:
    config = BrokerConfig(
        poll_timeout=0.3,
        answer_timeout=0.5,
        egress_url="ws://127.0.0.1:9/v1/relay",
        turn=TurnIssuer(SECRET, URLS),
    )
    async with serving(config, handler_cancellation=True) as broker:

        async def config_get() -> tuple[int, str | None, dict[str, object]]:
            async with broker.http.get(broker.url + "/v1/volunteer/config") as resp:
                return resp.status, resp.headers.get("Cache-Control"), await resp.json()

        got = await asyncio.gather(*(config_get() for _ in range(300)))
        assert {status for status, _, _ in got} == {200}
        assert [body for _, _, body in got if "turn" in body] == []
        assert {cache for _, cache, _ in got} == {"no-store"}

        async def poll(n: int) -> tuple[int, str | None, str | None, bytes]:
            body = encode(VolunteerPoll(f"harvester-{n:05d}", 8, 0, "browser"))
            async with broker.http.post(broker.url + "/v1/volunteer/poll", data=body) as resp:
                cache = resp.headers.get("Cache-Control")
                return resp.status, cache, resp.headers.get("Retry-After"), await resp.read()

        polls = await asyncio.gather(*(poll(n) for n in range(200)))
    answered = [body for status, _, _, body in polls if status == 200]
    refused = [(retry, body) for status, _, retry, body in polls if status == 429]
    assert len(answered) + len(refused) == 200
    # 10 a second in bursts of 100 per address (and 128 open at once): the rest is refused.
    assert len(answered) <= 110 and len(refused) >= 90, (len(answered), len(refused))
    assert all(retry is not None and b"turn" not in body for retry, body in refused)
    assert {cache for _, cache, _, _ in polls} == {"no-store"}
    usernames = set()
    for body in answered:
        (server,) = decode_poll_response(body).turn
        expiry = int(server.username.split(":")[0])
        assert expiry - time.time() <= 600 + 5  # minutes, not a day
        usernames.add(server.username)
    assert len(usernames) == len(answered)  # each answer its own


def test_the_credential_lifetime_is_capped() -> None:
    with pytest.raises(ValueError, match="at most"):
        TurnIssuer(SECRET, URLS, ttl=MAX_TTL + 1)


# -- coturn from the shipped configuration ----------------------------------------------------


def test_no_relay_to_special_purpose_ipv4_addresses(turn_server: Coturn) -> None:
    username, password = _credentials(turn_server)
    with TurnProbe(("127.0.0.1", turn_server.port), username, password) as probe:
        allocation = probe.allocate(UDP)
        assert allocation.code == 200, allocation.error
        granted = {address: probe.create_permission(address).code for address in REFUSED_V4}
        assert {a: c for a, c in granted.items() if c != 403} == {}, granted
        # A channel binding installs a permission too: refused the same way.
        bound = {a: probe.channel_bind(a, 3478).code for a in ("10.0.0.1", "169.254.169.254")}
        assert set(bound.values()) == {403}, bound
        assert probe.create_permission(PUBLIC_V4).code == 200


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback here")
def test_no_relay_to_special_purpose_ipv6_addresses(turn_server: Coturn) -> None:
    username, password = _credentials(turn_server)
    with TurnProbe(("127.0.0.1", turn_server.port), username, password) as probe:
        allocation = probe.allocate(UDP, ipv6=True)
        assert allocation.code == 200, allocation.error
        granted = {address: probe.create_permission(address).code for address in REFUSED_V6}
        assert {a: c for a, c in granted.items() if c != 403} == {}, granted
        assert probe.create_permission(PUBLIC_V6).code == 200


def test_no_tcp_relay(turn_server: Coturn) -> None:
    """RFC 6062: neither a TCP allocation nor a Connect from any allocation."""
    username, password = _credentials(turn_server)
    with TurnProbe(("127.0.0.1", turn_server.port), username, password, "tcp") as probe:
        allocation = probe.allocate(TCP)
        assert allocation.code == 442, allocation.error  # Unsupported Transport Protocol
        assert probe.connect("10.0.0.1", 80).code != 200
    with TurnProbe(("127.0.0.1", turn_server.port), username, password, "tcp") as probe:
        assert probe.allocate(UDP).code == 200  # TURN over TCP to the server itself is fine
        assert probe.connect("10.0.0.1", 25).code != 200  # a UDP relay: no Connect at all


def test_the_secret_is_neither_on_the_command_line_nor_in_the_log(turn_server: Coturn) -> None:
    cmdline = Path(f"/proc/{turn_server.process.pid}/cmdline").read_bytes()
    assert SECRET.encode() not in cmdline
    config = Path(cmdline.split(b"\0")[2].decode())  # turnserver -c FILE
    assert config.stat().st_mode & 0o777 == 0o600
    assert SECRET in config.read_text()
    assert SECRET not in turn_server.log_text() + turn_server.stderr_text()
    with TurnProbe(("127.0.0.1", turn_server.port), "1:someone", "wrong") as probe:
        assert probe.allocate(UDP).code == 401  # no secret, no relay


def test_a_relay_outlives_its_credential_on_coturn(turn_server: Coturn) -> None:
    """What --turn-ttl's default rests on: coturn checks a credential's expiry when an
    allocation is made, and refreshes an allocation with the key it cached then, so a call
    lasts past its credential; an expired credential makes no new allocation."""
    username, password = _credentials(turn_server, ttl=2)
    with TurnProbe(("127.0.0.1", turn_server.port), username, password) as probe:
        assert probe.allocate(UDP).code == 200
        time.sleep(3)
        assert probe.refresh().code == 200
        assert probe.create_permission(PUBLIC_V4).code == 200
    with TurnProbe(("127.0.0.1", turn_server.port), username, password) as probe:
        assert probe.allocate(UDP).code == 401
