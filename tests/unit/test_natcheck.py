"""RFC 5780 discovery without sockets: the decision table, then the engine against
simulated NATs (every mapping x filtering behaviour) and a simulated two-address server."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from aioice import stun

from unwall.transport.natcheck import (
    CHANGE_IP,
    CHANGE_PORT,
    Address,
    Behaviour,
    NatCheckConfig,
    NatDiscovery,
    Outcome,
    Probe,
    Refused,
    Reply,
    Send,
    Verdict,
    next_step,
    stun_server_of,
)
from unwall.wire.nat import NatKind

LOCAL = ("198.51.100.10", 40000)
SERVER = ("203.0.113.2", 3478)
OTHER = ("203.0.113.3", 3479)
X1 = ("203.0.113.200", 50001)
X2 = ("203.0.113.200", 50002)
X3 = ("203.0.113.200", 50003)


def reply(mapped: Address, source: Address = SERVER, other: Address | None = OTHER) -> Reply:
    return Reply(mapped, source, other)


B = Probe.BINDING
FB = Probe.FILTER_CHANGE_BOTH
FP = Probe.FILTER_CHANGE_PORT
MI = Probe.MAPPING_ALT_IP
MB = Probe.MAPPING_ALT_BOTH

# (outcomes so far, expected next send or verdict kind)
STEPS: list[tuple[str, dict[Probe, Outcome], Send | NatKind]] = [
    ("start", {}, Send(B, SERVER)),
    ("silent server", {B: None}, "unknown"),
    ("refused binding", {B: Refused(400, "Bad Request")}, "unknown"),
    ("no NAT", {B: reply(LOCAL)}, "none"),
    ("no NAT, no RFC 5780", {B: reply(LOCAL, other=None)}, "none"),
    ("NAT, no RFC 5780", {B: reply(X1, other=None)}, "unknown"),
    ("OTHER-ADDRESS is the primary", {B: reply(X1, other=SERVER)}, "unknown"),
    ("OTHER-ADDRESS same IP", {B: reply(X1, other=(SERVER[0], 3479))}, "unknown"),
    ("filtering first", {B: reply(X1)}, Send(FB, SERVER, CHANGE_IP | CHANGE_PORT)),
    ("then change port", {B: reply(X1), FB: None}, Send(FP, SERVER, CHANGE_PORT)),
    (
        "CHANGE-REQUEST refused (420)",
        {B: reply(X1), FB: Refused(420, "Unknown Attribute")},
        "unknown",
    ),
    ("CHANGE-REQUEST ignored", {B: reply(X1), FB: reply(X1, source=SERVER)}, "unknown"),
    (
        "change port ignored",
        {B: reply(X1), FB: None, FP: reply(X1, source=SERVER)},
        "unknown",
    ),
    ("then mapping", {B: reply(X1), FB: reply(X1, OTHER)}, Send(MI, (OTHER[0], SERVER[1]))),
    (
        "alternate IP silent",
        {B: reply(X1), FB: reply(X1, OTHER), MI: None},
        "unknown",
    ),
    ("full cone", {B: reply(X1), FB: reply(X1, OTHER), MI: reply(X1)}, "full-cone"),
    (
        "restricted",
        {B: reply(X1), FB: None, FP: reply(X1, (SERVER[0], OTHER[1])), MI: reply(X1)},
        "restricted",
    ),
    ("port-restricted", {B: reply(X1), FB: None, FP: None, MI: reply(X1)}, "port-restricted"),
    (
        "mapping changed: test III",
        {B: reply(X1), FB: None, FP: None, MI: reply(X2)},
        Send(MB, OTHER),
    ),
    (
        "address-dependent mapping",
        {B: reply(X1), FB: None, FP: None, MI: reply(X2), MB: reply(X2)},
        "symmetric",
    ),
    (
        "address-and-port-dependent mapping",
        {B: reply(X1), FB: None, FP: None, MI: reply(X2), MB: reply(X3)},
        "symmetric",
    ),
    (
        "symmetric with open filtering",
        {B: reply(X1), FB: reply(X1, OTHER), MI: reply(X2), MB: reply(X3)},
        "symmetric",
    ),
    (
        "alternate address silent",
        {B: reply(X1), FB: None, FP: None, MI: reply(X2), MB: None},
        "unknown",
    ),
]


@pytest.mark.parametrize(
    ("outcomes", "expected"), [s[1:] for s in STEPS], ids=[s[0] for s in STEPS]
)
def test_next_step(outcomes: dict[Probe, Outcome], expected: Send | NatKind) -> None:
    step = next_step(LOCAL, SERVER, outcomes)
    if isinstance(expected, Send):
        assert step == expected
    else:
        assert isinstance(step, Verdict)
        assert step.kind == expected, step.reason


def test_verdict_names_both_behaviours() -> None:
    outcomes: dict[Probe, Outcome] = {
        B: reply(X1),
        FB: None,
        FP: None,
        MI: reply(X2),
        MB: reply(X3),
    }
    verdict = next_step(LOCAL, SERVER, outcomes)
    assert isinstance(verdict, Verdict)
    assert (verdict.mapping, verdict.filtering) == (
        "address-and-port-dependent",
        "address-and-port-dependent",
    )
    assert verdict.mapped == X1
    assert "symmetric (mapping address-and-port-dependent" in verdict.describe()


# -- the engine, against a simulated NAT and server -------------------------------------------


@dataclass
class SimNat:
    """A NAT of one mapping and one filtering behaviour (RFC 4787)."""

    mapping: Behaviour
    filtering: Behaviour
    public_ip: str = "203.0.113.200"
    ports: itertools.count[int] = field(default_factory=lambda: itertools.count(50001))
    bindings: dict[tuple[object, ...], int] = field(default_factory=dict)
    sent_to: set[Address] = field(default_factory=set)

    def outbound(self, dst: Address) -> Address:
        key: tuple[object, ...] = {
            "endpoint-independent": (),
            "address-dependent": (dst[0],),
            "address-and-port-dependent": dst,
        }[self.mapping]
        if key not in self.bindings:
            self.bindings[key] = next(self.ports)
        self.sent_to.add(dst)
        return (self.public_ip, self.bindings[key])

    def allows(self, src: Address) -> bool:
        if self.filtering == "endpoint-independent":
            return True
        if self.filtering == "address-dependent":
            return any(ip == src[0] for ip, _ in self.sent_to)
        return src in self.sent_to


@dataclass
class SimServer:
    """A STUN server with two addresses that honours CHANGE-REQUEST, or a plainer one."""

    rfc5780: bool = True
    honour_change: bool = True
    silent: bool = False

    def answer(self, data: bytes, src: Address, dst: Address) -> tuple[bytes, Address] | None:
        if self.silent:
            return None
        request = stun.parse_message(data)
        change = request.attributes.get("CHANGE-REQUEST", 0) if self.honour_change else 0
        ip = (OTHER[0] if dst[0] == SERVER[0] else SERVER[0]) if change & CHANGE_IP else dst[0]
        ports = {SERVER[1]: OTHER[1], OTHER[1]: SERVER[1]}
        port = ports[dst[1]] if change & CHANGE_PORT else dst[1]
        response = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = src
        if self.rfc5780:
            other_ip = OTHER[0] if dst[0] == SERVER[0] else SERVER[0]
            other_port = OTHER[1] if dst[1] == SERVER[1] else SERVER[1]
            response.attributes["OTHER-ADDRESS"] = (other_ip, other_port)
        return bytes(response), (ip, port)


def run(
    nat: SimNat | None,
    server: SimServer,
    loss: int = 0,
    change_request: bool = True,
    sent: list[bytes] | None = None,
) -> tuple[Verdict, float]:
    """Drive the engine to its verdict; ``loss`` drops the first N requests sent, and
    ``sent`` collects every request."""
    now = 0.0
    config = NatCheckConfig(rto=0.25, attempts=3, timeout=1.5, change_request=change_request)
    engine = NatDiscovery(LOCAL, SERVER, now, config)
    dropped = 0
    while engine.verdict is None:
        for data, to in engine.datagrams_to_send(now):
            if sent is not None:
                sent.append(data)
            if dropped < loss:
                dropped += 1
                continue
            src = nat.outbound(to) if nat is not None else LOCAL
            answered = server.answer(data, src, to)
            if answered is not None and (nat is None or nat.allows(answered[1])):
                engine.receive_datagram(answered[0], answered[1], now)
        timer = engine.get_timer()
        if timer is None:
            break
        now = max(now, timer)
        engine.handle_timer(now)
    assert engine.verdict is not None
    return engine.verdict, now


BEHAVIOURS: list[Behaviour] = [
    "endpoint-independent",
    "address-dependent",
    "address-and-port-dependent",
]
EXPECTED: dict[tuple[Behaviour, Behaviour], NatKind] = {
    ("endpoint-independent", "endpoint-independent"): "full-cone",
    ("endpoint-independent", "address-dependent"): "restricted",
    ("endpoint-independent", "address-and-port-dependent"): "port-restricted",
    **{(m, f): "symmetric" for m in BEHAVIOURS[1:] for f in BEHAVIOURS},
}


@pytest.mark.parametrize(("mapping", "filtering"), list(EXPECTED))
def test_engine_classifies_every_nat(mapping: Behaviour, filtering: Behaviour) -> None:
    verdict, elapsed = run(SimNat(mapping, filtering), SimServer())
    assert verdict.kind == EXPECTED[(mapping, filtering)], verdict.describe()
    assert verdict.mapping == mapping
    assert verdict.filtering == filtering
    # Each test that goes unanswered costs one timeout; nothing else waits.
    unanswered = {"endpoint-independent": 0, "address-dependent": 1}.get(filtering, 2)
    assert elapsed == pytest.approx(1.5 * unanswered)


@pytest.mark.parametrize(
    ("nat", "server", "kind"),
    [
        (None, SimServer(), "none"),
        (None, SimServer(rfc5780=False), "none"),
        (
            SimNat("endpoint-independent", "endpoint-independent"),
            SimServer(rfc5780=False),
            "unknown",
        ),
        (SimNat("endpoint-independent", "endpoint-independent"), SimServer(silent=True), "unknown"),
        (
            SimNat("endpoint-independent", "endpoint-independent"),
            SimServer(honour_change=False),
            "unknown",
        ),
    ],
    ids=["no NAT", "no NAT, plain server", "plain server", "silent server", "ignores CHANGE"],
)
def test_engine_edge_cases(nat: SimNat | None, server: SimServer, kind: NatKind) -> None:
    verdict, _ = run(nat, server)
    assert verdict.kind == kind, verdict.describe()


def test_engine_retransmits_a_lost_request() -> None:
    verdict, elapsed = run(SimNat("endpoint-independent", "endpoint-independent"), SimServer(), 2)
    assert verdict.kind == "full-cone"
    assert elapsed == pytest.approx(0.75)  # sent at 0, 0.25 and 0.75: the third got through


def test_engine_ignores_strangers() -> None:
    engine = NatDiscovery(LOCAL, SERVER, 0.0)
    [(data, _)] = engine.datagrams_to_send(0.0)
    request = stun.parse_message(data)
    stranger = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)  # another transaction
    stranger.attributes["XOR-MAPPED-ADDRESS"] = LOCAL
    for junk in (b"", b"\x00" * 40, bytes(stranger)):
        engine.receive_datagram(junk, SERVER, 0.1)
    assert engine.verdict is None
    answer = stun.Message(
        stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
    )
    answer.attributes["XOR-MAPPED-ADDRESS"] = LOCAL
    engine.receive_datagram(bytes(answer), SERVER, 0.2)
    assert engine.verdict is not None and engine.verdict.kind == "none"


@pytest.mark.parametrize(
    ("urls", "server"),
    [
        ([], None),
        (["turn:203.0.113.5:3478"], None),
        (["stun:203.0.113.5"], ("203.0.113.5", 3478)),
        (["turn:x:1", "stun:stun.example:3479", "stun:b:1"], ("stun.example", 3479)),
        (["stun:[2001:db8::1]:5349"], ("2001:db8::1", 5349)),
    ],
)
def test_stun_server_of(urls: list[str], server: tuple[str, int] | None) -> None:
    assert stun_server_of(urls) == server


@pytest.mark.parametrize(("mapping", "filtering"), list(EXPECTED))
def test_the_browser_check_sends_no_change_request(
    mapping: Behaviour, filtering: Behaviour
) -> None:
    """Without CHANGE-REQUEST (the client's default): plain bindings only, to the server's
    two addresses; the mapping is measured, the filtering taken as the strictest, so no
    kind is reported more open than it is, and no test waits for an answer that cannot
    come."""
    sent: list[bytes] = []
    verdict, elapsed = run(SimNat(mapping, filtering), SimServer(), change_request=False, sent=sent)
    assert all("CHANGE-REQUEST" not in stun.parse_message(d).attributes for d in sent)
    assert verdict.mapping == mapping and verdict.filtering is None
    assert verdict.kind == ("port-restricted" if mapping == "endpoint-independent" else "symmetric")
    assert elapsed == 0.0
