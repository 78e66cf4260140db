"""STUN analyzer: ICE checks and responses from aioice, and a whole aiortc WebRTC flow."""

from __future__ import annotations

import pytest
from lab_samples import (
    aioice_binding_success,
    aioice_check,
    aioice_error_response,
    aioquic_initials,
    dns_query,
    feed_all,
    fixture_datagrams,
    keys,
    noise,
    openssl_dtls_client_hello,
    stun_with_software,
    udp_flow_packets,
)

from unwall.lab.analyzers import StunAnalyzer
from unwall.lab.analyzers.stun import parse_stun

CHECK = aioice_check(controlling=True)

# (id, datagram, findings expected among the analyzer's)
MESSAGES = [
    (
        "ice-check-controlling",
        CHECK,
        {"binding-request": "magic-cookie", "ice-role": "controlling", "username": "rUfr:"},
    ),
    (
        "ice-check-controlled",
        aioice_check(controlling=False),
        {"binding-request": "magic-cookie", "ice-role": "controlled", "username": "rUfr:"},
    ),
    (
        "binding-success-ipv4",
        aioice_binding_success(CHECK, ("198.51.100.10", 54321)),
        {"binding-success-response": "magic-cookie", "mapped-address": "198.51.100.10:54321"},
    ),
    (
        "binding-success-ipv6",
        aioice_binding_success(CHECK, ("2001:db8::10", 443)),
        {"binding-success-response": "magic-cookie", "mapped-address": "[2001:db8::10]:443"},
    ),
    (
        "role-conflict",
        aioice_error_response(CHECK, (487, "Role Conflict")),
        {"binding-error-response": "magic-cookie", "error-code": "487 Role Conflict"},
    ),
    (
        "server-binding-with-software",
        stun_with_software("lab-client 1.0"),
        {"binding-request": "magic-cookie", "software": "lab-client 1.0"},
    ),
]


@pytest.mark.parametrize(("name", "datagram", "expected"), MESSAGES, ids=[c[0] for c in MESSAGES])
def test_message_findings(name: str, datagram: bytes, expected: dict[str, str]) -> None:
    found = keys(StunAnalyzer().feed(datagram, from_client=True))
    assert found["transaction-id"] == datagram[8:20].hex()
    for key, value in expected.items():
        if key == "username":  # "remote:local"; aioice picks the local ufrag at random
            assert found[key].startswith(value) and len(found[key]) == len(value) + 4
        else:
            assert found[key] == value


def test_whole_webrtc_flow_from_aiortc() -> None:
    analyzer = StunAnalyzer()
    findings = []
    for from_client, datagram in fixture_datagrams("aiortc-webrtc"):
        findings += analyzer.feed(datagram, from_client=from_client)
    pairs = {(f.key, f.value) for f in findings}
    assert ("binding-request", "magic-cookie") in pairs
    assert ("binding-success-response", "magic-cookie") in pairs
    assert {v for k, v in pairs if k == "ice-role"} == {"controlling", "controlled"}
    usernames = sorted(v for k, v in pairs if k == "username")
    assert len(usernames) == 2
    first, second = (name.split(":") for name in usernames)
    assert first == second[::-1], "each side names the pair of ufrags the other way round"
    assert all(v.startswith("127.0.0.1:") for k, v in pairs if k == "mapped-address")
    assert not analyzer.done, "STUN keeps coming on a WebRTC flow"


def test_dtls_and_media_between_stun_messages_are_skipped() -> None:
    analyzer = StunAnalyzer()
    assert analyzer.feed(CHECK, from_client=True)
    assert analyzer.feed(openssl_dtls_client_hello(), from_client=False) == []
    assert analyzer.feed(b"\x80\x60" + noise(170, seed=6), from_client=True) == []  # RTP-like
    assert not analyzer.done
    assert analyzer.feed(aioice_check(controlling=False), from_client=False)


def test_a_retransmitted_check_says_nothing_new() -> None:
    analyzer = StunAnalyzer()
    assert analyzer.feed(CHECK, from_client=True)
    assert analyzer.feed(CHECK, from_client=True) == []


# (message type field, kind): RFC 8489 and RFC 8656 methods in each class.
KINDS = [
    (0x0001, "binding-request"),
    (0x0011, "binding-indication"),
    (0x0101, "binding-success-response"),
    (0x0111, "binding-error-response"),
    (0x0003, "allocate-request"),
    (0x0113, "allocate-error-response"),
    (0x0104, "refresh-success-response"),
    (0x0016, "send-indication"),
    (0x0017, "data-indication"),
    (0x0008, "create-permission-request"),
    (0x0009, "channel-bind-request"),
    (0x3EEF, "method-0xfff-request"),
]


@pytest.mark.parametrize(("message_type", "kind"), KINDS, ids=[k for _, k in KINDS])
def test_message_type_decoding(message_type: int, kind: str) -> None:
    header = message_type.to_bytes(2, "big") + b"\x00\x00" + CHECK[4:20]
    assert parse_stun(header).kind == kind


# (id, first datagram): not STUN.
NOT_STUN = [
    ("dtls-client-hello", openssl_dtls_client_hello()),
    ("quic-initial", aioquic_initials()[0]),
    ("dns-query", dns_query()),
    ("random", noise(100, seed=7)),
    ("rfc3489-without-cookie", CHECK[:4] + b"\x00\x00\x00\x00" + CHECK[8:]),
    ("length-mismatch", CHECK[:-4]),
    ("length-not-multiple-of-4", CHECK[:2] + b"\x00\x03" + CHECK[4:20] + b"abc"),
    ("attribute-past-the-end", CHECK[:2] + b"\x00\x04" + CHECK[4:20] + b"\x00\x06\x00\x09"),
    ("top-bits-set", bytes([CHECK[0] | 0x80]) + CHECK[1:]),
    ("header-only-truncated", CHECK[:19]),
]


@pytest.mark.parametrize(("name", "datagram"), NOT_STUN, ids=[c[0] for c in NOT_STUN])
def test_other_first_datagrams_give_nothing_and_give_up(
    name: str, datagram: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    analyzer = StunAnalyzer()
    assert analyzer.feed(datagram, from_client=True) == []
    assert analyzer.done
    assert not caplog.records
    assert feed_all(analyzer, [CHECK]) == [], "the flow's first datagram decided"


# -- RFC 5780's CHANGE-REQUEST: a NAT-behaviour check, which no browser makes ------------------


def _nat_check_request(change: int | None) -> bytes:
    """A binding request as unwall's NAT check (unwall.transport.natcheck) sends it."""
    import aioice.stun

    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    if change is not None:
        request.attributes["CHANGE-REQUEST"] = change
    return bytes(request)


def _udp_packets(datagrams: list[tuple[bool, bytes]]) -> list[bytes]:
    return udp_flow_packets(datagrams, server=("203.0.113.3", 3478))


@pytest.mark.parametrize(
    ("change", "value"), [(0x06, "ip+port"), (0x02, "port"), (0x04, "ip"), (0x00, "none")]
)
def test_change_request_is_a_finding(change: int, value: str) -> None:
    found = keys(feed_all(StunAnalyzer(), [_nat_check_request(change)]))
    assert found["change-request"] == value
    assert "change-request" not in keys(feed_all(StunAnalyzer(), [_nat_check_request(None)]))


def _nat_check_flow() -> list[bytes]:
    plain = _nat_check_request(None)
    return _udp_packets([
        (True, plain),
        (False, aioice_binding_success(plain, ("203.0.113.1", 40000))),
        (True, _nat_check_request(0x06)),
        (True, _nat_check_request(0x02)),
    ])  # fmt: skip


@pytest.mark.parametrize("action", ["flag", "drop"])
def test_the_stun_rule_suspects_a_nat_check(action: str) -> None:
    from lab_samples import box_verdict

    from unwall.lab.inspector import MARK_DROP
    from unwall.lab.profile import CensorProfile

    profile = CensorProfile.from_dict({"stun": {"change_request": True, "action": action}})
    mark, _, suspected = box_verdict(profile, _nat_check_flow())
    assert suspected[0] == "stun change-request (ip+port): no browser sends one"
    assert (mark == MARK_DROP) == (action == "drop")


def test_without_the_rule_or_without_change_request_nothing_is_suspected() -> None:
    from lab_samples import box_verdict

    from unwall.lab.profile import CensorProfile

    assert box_verdict(CensorProfile(), _nat_check_flow())[2] == []
    ruled = CensorProfile.from_dict({"stun": {"change_request": True}})
    # a browser's call: ICE checks and their answers, no CHANGE-REQUEST
    browser = _udp_packets(list(fixture_datagrams("chromium-call")))
    assert box_verdict(ruled, browser)[2] == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"change_request": "yes"}, "[stun] change_request must be true or false"),
        ({"action": "rst"}, "[stun] action must be one of"),
        ({"changerequest": True}, "unknown key(s) ['changerequest'] in [stun]"),
    ],
)
def test_bad_stun_rules_are_named(table: dict[str, object], message: str) -> None:
    from unwall.lab.profile import CensorProfile, ProfileError

    with pytest.raises(ProfileError) as error:
        CensorProfile.from_dict({"stun": table})
    assert message in str(error.value)
