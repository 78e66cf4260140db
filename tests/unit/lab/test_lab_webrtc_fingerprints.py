"""WebRTC fingerprints, from flows captured in the lab: Debian's Chromium (the reference a
browsers-only box allows) and unwall's stack (aiortc, as `unwall.transport.aiortc_engine` sets it
up for the client and the headless volunteer alike). And the box's WebRTC rules on those
flows: an allow-list that passes Chromium and stops today's unwall, a block-list, `flag`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import struct
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lab_samples import (
    box_verdict,
    fixture_datagrams,
    openssl_dtls_client_hello,
    udp_flow_packets,
)

from unwall.lab.analyzers import DtlsAnalyzer, StunAnalyzer, parse_client_hello
from unwall.lab.analyzers.serverhello import describe_certificate
from unwall.lab.flowlog import FlowLog, FlowRow, report
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP, Inspector
from unwall.lab.profile import CensorProfile, ProfileError, browser_reference

CHROMIUM_CALL = "chromium-call"  # Chromium to Chromium
CHROMIUM_CLIENT = "chromium-offer-dtls-client"  # Chromium's ClientHello, aiortc's ServerHello
CHROMIUM_SERVER = "chromium-offer-dtls-server"  # aiortc's ClientHello, Chromium's ServerHello
UNWALL = "aiortc-webrtc"  # two peers as unwall makes them

CHROMIUM_JA4 = "dd3i140900_fa23b50283d1_01b4b87481e4"
UNWALL_JA4 = "dd2i040700_3c189222c1bc_a5adb184b783"
CHROMIUM_CERT = "ec-secp256r1;31d;CN=WebRTC;serial 8B"
CHROMIUM_CHECK = "USERNAME,GOOG-NETWORK-INFO,ICE-ROLE,PRIORITY,MESSAGE-INTEGRITY,FINGERPRINT"
AIOICE_CHECK = "USERNAME,PRIORITY,ICE-ROLE,MESSAGE-INTEGRITY,FINGERPRINT"


def flow_findings(name: str) -> dict[str, set[str]]:
    """Every value of every DTLS and STUN finding on a captured flow."""
    dtls, stun = DtlsAnalyzer(), StunAnalyzer()
    found: dict[str, set[str]] = {}
    for from_client, datagram in fixture_datagrams(name):
        for finding in dtls.feed(datagram, from_client=from_client) + stun.feed(
            datagram, from_client=from_client
        ):
            found.setdefault(finding.key, set()).add(finding.value)
    assert dtls.done, "the analyzer saw the whole plaintext handshake"
    return found


# (fixture, fingerprint, the values it must show)
EXPECTED = [
    (CHROMIUM_CALL, "ja4", {CHROMIUM_JA4}),
    (CHROMIUM_CALL, "dtls-version", {"DTLS 1.3"}),
    (CHROMIUM_CALL, "ja4s", {"dd30200_1301_234ea6891581"}),
    (CHROMIUM_CALL, "ice-check", {CHROMIUM_CHECK}),
    (CHROMIUM_CLIENT, "ja4", {CHROMIUM_JA4}),
    (CHROMIUM_CLIENT, "client-cert", {CHROMIUM_CERT}),
    (CHROMIUM_SERVER, "server-cert", {CHROMIUM_CERT}),
    (CHROMIUM_SERVER, "ja4s", {"dd20400_c02b_3b9b7e494ad8"}),
    (CHROMIUM_SERVER, "ja4", {UNWALL_JA4}),
    (UNWALL, "ja3", {"66d279042bef80ae8e6369c52a7249b7"}),
    (UNWALL, "ja4", {UNWALL_JA4}),
    (UNWALL, "ja4s", {"dd20400_c02b_6bf46c830e02"}),
    (UNWALL, "dtls-version", {"DTLS 1.2"}),
    (UNWALL, "ice-check", {AIOICE_CHECK}),
    (CHROMIUM_CALL, "ice-priority", {"type 110 local 30 component 1"}),
    (
        CHROMIUM_CLIENT,
        "ice-priority",
        {"type 110 local 30 component 1", "type 110 local 65535 component 1"},
    ),
    (UNWALL, "ice-priority", {"type 110 local 65535 component 1"}),
]


@pytest.mark.parametrize(
    ("name", "key", "values"), EXPECTED, ids=[f"{n}-{k}" for n, k, _ in EXPECTED]
)
def test_fingerprints_of_captured_flows(name: str, key: str, values: set[str]) -> None:
    assert flow_findings(name)[key] == values


def test_unwall_certificates_are_not_chromiums() -> None:
    found = flow_findings(UNWALL)
    for role in ("server-cert", "client-cert"):
        (value,) = found[role]
        kind, days, subject, serial = value.split(";")
        assert (kind, days, serial) == ("ec-secp256r1", "31d", "serial 20B")
        assert subject.startswith("CN=") and subject != "CN=WebRTC"


def test_chromium_shuffles_ja3_but_not_ja4() -> None:
    ja3 = {v for name in (CHROMIUM_CALL, CHROMIUM_CLIENT) for v in flow_findings(name)["ja3"]}
    ja4 = {v for name in (CHROMIUM_CALL, CHROMIUM_CLIENT) for v in flow_findings(name)["ja4"]}
    assert len(ja3) == 2 and ja4 == {CHROMIUM_JA4}


def _hello_body(datagram: bytes) -> bytes:
    return datagram[13 + 12 :]  # record header, handshake header (one whole fragment)


def test_ja4_ignores_extension_order_and_grease_and_marks_sni() -> None:
    hello = parse_client_hello(_hello_body(openssl_dtls_client_hello()), dtls=True)
    shuffled = list(hello.extensions)
    random.Random(4).shuffle(shuffled)
    other = type(hello)(**{**hello.__dict__, "extensions": (0x0A0A, *shuffled)})
    assert other.ja3() != hello.ja3()
    assert other.ja4("dtls") == hello.ja4("dtls")
    assert hello.ja4("dtls").startswith("dd2i")
    named = parse_client_hello(
        _hello_body(openssl_dtls_client_hello(server_name=b"vpn.example")), dtls=True
    )
    assert named.ja4("dtls").startswith("dd2d")
    ciphers = ",".join(f"{c:04x}" for c in sorted(hello.cipher_suites))
    assert hello.ja4("dtls").split("_")[1] == hashlib.sha256(ciphers.encode()).hexdigest()[:12]


def _certificate(key: object, serial: int, days: int, name: str) -> bytes:
    now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)  # type: ignore[arg-type]


def test_certificate_description() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    high_bit = 0x80 << 56  # DER puts a zero byte before it: still an 8-byte serial
    assert describe_certificate(_certificate(p256, high_bit | 5, 31, "WebRTC")) == CHROMIUM_CERT
    assert describe_certificate(_certificate(p256, 5 << 56, 31, "WebRTC")) == CHROMIUM_CERT
    # a serial whose first byte is zero is a byte shorter in DER (not what Chromium makes)
    assert describe_certificate(_certificate(p256, 5 << 48, 31, "WebRTC")).endswith("7B")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert describe_certificate(_certificate(rsa_key, 1, 365, "peer")) == (
        "rsa-2048;365d;CN=peer;serial 1B"
    )


# -- the box's rules on these flows -----------------------------------------------------------


def _packets(name: str) -> list[bytes]:
    """The captured flow as IPv4 packets between a censored host and a peer outside."""
    return udp_flow_packets(list(fixture_datagrams(name)))


def _verdict(profile: CensorProfile, name: str) -> tuple[int | None, str, list[str]]:
    return box_verdict(profile, _packets(name))


BROWSERS_ONLY = CensorProfile.from_dict({"webrtc": {"allow": "browsers"}})


@pytest.mark.parametrize("name", [CHROMIUM_CALL])
def test_browsers_only_lets_a_browser_call_through(name: str) -> None:
    mark, reason, suspected = _verdict(BROWSERS_ONLY, name)
    assert (mark, suspected) == (MARK_ALLOW, [])
    assert reason == "nothing to object to"


#: aioice's ICE checks list their attributes in Firefox's order (the reference has Firefox
#: ESR since issue 21): a box that lets Firefox through tells them apart by the PRIORITY's
#: local preference instead
AIOICE_PRIORITY = "webrtc ice-priority type 110 local 65535 component 1 is not a browser's"


@pytest.mark.parametrize(("name", "evidence"), [
    (UNWALL, AIOICE_PRIORITY),
    (CHROMIUM_SERVER, AIOICE_PRIORITY),
    (CHROMIUM_CLIENT, AIOICE_PRIORITY),
])  # fmt: skip
def test_browsers_only_stops_todays_unwall(name: str, evidence: str) -> None:
    """A flow with today's stack at either end, even against a browser, shows it."""
    mark, reason, suspected = _verdict(BROWSERS_ONLY, name)
    assert mark == MARK_DROP
    assert reason == evidence == suspected[0]


def test_browsers_only_judges_the_dtls_too() -> None:
    """Past the ICE checks (allowed here), the ClientHello gives today's stack away."""
    reference = browser_reference()
    allow = {k: list(v) for k, v in reference.items()}
    allow.update({"ice-check": ["*"], "ice-priority": ["*"]})
    profile = CensorProfile.from_dict({"webrtc": {"allow": allow}})
    mark, reason, _ = _verdict(profile, UNWALL)
    assert mark == MARK_DROP
    assert reason == f"webrtc ja4 {UNWALL_JA4} is not a browser's"


def test_flag_lets_it_through_and_says_why() -> None:
    profile = CensorProfile.from_dict({"webrtc": {"allow": "browsers", "action": "flag"}})
    mark, _, suspected = _verdict(profile, UNWALL)
    assert mark == MARK_ALLOW
    assert f"webrtc ja4 {UNWALL_JA4} is not a browser's" in suspected
    assert any(s.startswith("webrtc client-cert ec-secp256r1;31d;CN=") for s in suspected)


def test_a_block_list_by_ja3() -> None:
    profile = CensorProfile.from_dict(
        {"webrtc": {"block": {"ja3": ["66d279042bef80ae8e6369c52a7249b7"]}}}
    )
    assert _verdict(profile, UNWALL)[:2] == (
        MARK_DROP,
        "webrtc ja3 66d279042bef80ae8e6369c52a7249b7 is on the block list",
    )
    assert _verdict(profile, CHROMIUM_CALL)[0] == MARK_ALLOW


def test_patterns_match_shell_style() -> None:
    profile = CensorProfile.from_dict({"webrtc": {"block": {"client-cert": ["*;serial 20B"]}}})
    assert _verdict(profile, UNWALL)[0] == MARK_DROP
    assert _verdict(profile, CHROMIUM_CALL)[0] == MARK_ALLOW


def test_without_webrtc_rules_nothing_is_suspected() -> None:
    mark, _, suspected = _verdict(CensorProfile(), UNWALL)
    assert (mark, suspected) == (MARK_ALLOW, [])


@pytest.mark.parametrize(("document", "message"), [
    ({"webrtc": {"allow": "firefox"}}, 'must be "browsers" or a table'),
    ({"webrtc": {"allow": {"ja5": ["x"]}}}, "unknown fingerprint(s) ['ja5']"),
    ({"webrtc": {"block": {"ja3": [1]}}}, "[webrtc] block.ja3 must be a list of patterns"),
    ({"webrtc": {"action": "rst"}}, "[webrtc] action must be one of ('drop', 'flag')"),
    ({"webrtc": {"allowed": "browsers"}}, "unknown key(s) ['allowed'] in [webrtc]"),
])  # fmt: skip
def test_bad_webrtc_rules_are_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError) as error:
        CensorProfile.from_dict(document)
    assert message in str(error.value)


def test_the_report_names_the_suspected_host(tmp_path: Path) -> None:
    log = FlowLog(tmp_path / "flows.db")
    inspector = Inspector(BROWSERS_ONLY)
    row = FlowRow("udp", "198.51.100.10", 40000, "203.0.113.50", 50000)
    flow_id = log.flow_seen(row, 0.0)
    for number, packet in enumerate(_packets(UNWALL)):
        decision = inspector.packet(packet, now=float(number))
        assert decision is not None
        log.add_findings(flow_id, [(f.analyzer, f.key, f.value) for f in decision.new_findings])
        if decision.mark is not None:
            log.set_verdict(flow_id, "drop", decision.flow.reason)
            break
    log.close()
    host = report(tmp_path / "flows.db", (), set())["hosts"]["198.51.100.10"]
    assert host["circumvention_suspected"] == {
        "WebRTC that does not look like a browser's": {
            "evidence": [AIOICE_PRIORITY],
            "peers": ["203.0.113.50"],
        }
    }
    assert json.dumps(host)  # the report stays plain JSON


# -- unwall's own stack, as it is now --------------------------------------------------------


async def _unwall_flow() -> list[tuple[bool, bytes]]:
    """Two peers as unwall makes them, the client's (offerer) and the headless volunteer's
    (answerer), open a data channel on 127.0.0.1; every datagram either ICE agent
    receives, with the offerer as the "client"."""
    import asyncio

    import aioice.ice

    from unwall.transport import webrtc
    from unwall.transport.aiortc_engine import engine

    received: list[tuple[int, bytes]] = []
    original = aioice.ice.StunProtocol.datagram_received

    def record(self: aioice.ice.StunProtocol, data: bytes, addr: tuple[str, int]) -> None:
        received.append((id(self.receiver), data))
        original(self, data, addr)

    aioice.ice.StunProtocol.datagram_received = record  # type: ignore[method-assign]
    pinned = webrtc.pinned_host_addresses()
    webrtc.set_host_addresses(["127.0.0.1"])
    made = engine.AiortcEngine()
    client, volunteer = made.new_peer(), made.new_peer()
    try:
        await client.accept_answer(await volunteer.answer(await client.offer()))
        await asyncio.wait_for(client.opened.wait(), 20)
        assert client.send(b"x" * 1000)
        await asyncio.sleep(0.3)
        pc = client.pc  # type: ignore[attr-defined]
        offerer_agent = id(pc.sctp.transport.transport._connection)
    finally:
        aioice.ice.StunProtocol.datagram_received = original  # type: ignore[method-assign]
        webrtc.set_host_addresses(pinned)
        await client.close()
        await volunteer.close()
    return [(receiver != offerer_agent, data) for receiver, data in received[:60]]


def _findings(flow: list[tuple[bool, bytes]]) -> dict[str, set[str]]:
    dtls, stun = DtlsAnalyzer(), StunAnalyzer()
    found: dict[str, set[str]] = {}
    for from_client, datagram in flow:
        for finding in dtls.feed(datagram, from_client=from_client) + stun.feed(
            datagram, from_client=from_client
        ):
            found.setdefault(finding.key, set()).add(finding.value)
    return found


async def test_unwall_now_is_chromium_in_every_field_one_flow_shows() -> None:
    """The client (DTLS client, a=setup:active) and the headless volunteer: DTLS 1.3 with
    Chromium's ClientHello and ServerHello, Chromium's ICE checks and SRTP profiles, the
    certificates encrypted; a browsers-only box lets the flow through."""
    flow = await _unwall_flow()
    found = _findings(flow)
    call = flow_findings(CHROMIUM_CALL)
    for key in ("ja4", "ja4s", "dtls-version", "ice-check", "ice-priority", "server-hello"):
        assert found[key] == call[key], key
    assert found["ja4"] == {CHROMIUM_JA4}
    assert found["dtls-version"] == {"DTLS 1.3"}
    assert "server-cert" not in found and "client-cert" not in found  # encrypted in 1.3
    chromium = tomllib.loads(
        resources.files("unwall.lab").joinpath("references/browser-webrtc.toml").read_text()
    )["chromium"]
    assert found["srtp"] == set(chromium["srtp"])
    # Chromium's extension set and lengths; the order is drawn anew on every connection.
    (ours,) = found["client-hello"]
    (theirs, *_) = call["client-hello"]
    assert sorted(ours.split(",")[2].split("-")) == sorted(theirs.split(",")[2].split("-"))
    mark, reason, suspected = box_verdict(BROWSERS_ONLY, udp_flow_packets(flow))
    assert (mark, suspected) == (MARK_ALLOW, []), reason


async def test_unwall_varies_its_extension_order_as_chromium_does() -> None:
    """Between two unwall ends the ClientHello's extensions are permuted per connection, so
    a host's flows do not repeat one JA3 (JA4, which sorts them, stays Chromium's)."""
    ja3 = set()
    for _ in range(3):
        found = _findings(await _unwall_flow())
        assert found["ja4"] == {CHROMIUM_JA4}
        ja3 |= found["ja3"]
    assert len(ja3) == 3


def test_dtls_that_is_not_webrtc_is_not_judged() -> None:
    """A DTLS VPN (no ICE, no SRTP) is not WebRTC: a browsers-only box leaves it alone."""
    from lab_samples import openssl_dtls_client_hello as hello

    inspector = Inspector(BROWSERS_ONLY)
    datagram = hello(srtp_profiles=None, server_name=b"vpn.example")
    udp = struct.pack("!HHHH", 40000, 4433, 8 + len(datagram), 0) + datagram
    header = bytes([0x45, 0]) + struct.pack("!HHHBBH", 20 + len(udp), 1, 0x4000, 64, 17, 0)
    packet = header + bytes([198, 51, 100, 10]) + bytes([203, 0, 113, 50]) + udp
    decision = inspector.packet(packet, now=0.0)
    assert decision is not None
    assert not [f for f in decision.new_findings if f.key == "suspected"]
    assert decision.mark != MARK_DROP
