"""The fully-encrypted-traffic rule (Wu et al., USENIX Security 2023): its five
exemptions on the first client payload, and the box's `[fet]` rule on whole flows."""

from __future__ import annotations

import pytest
from lab_samples import (
    box_verdict,
    http_client_request,
    noise,
    python_client_hello,
    tcp_flow_packets,
)

from unwall.lab.analyzers import FullyEncryptedAnalyzer
from unwall.lab.analyzers.fet import exemption
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP
from unwall.lab.profile import CensorProfile, ProfileError


def _balanced(size: int, seed: int) -> bytes:
    """Random-looking bytes with about 4 bits set per byte and few printable ones (what a
    fully encrypted protocol sends): noise with its printable bytes pushed out of range."""
    return bytes(b | 0x80 if 0x20 <= b <= 0x7E else b for b in noise(size, seed))


RANDOM = _balanced(600, seed=3)

# (id, first payload, the exemption that must hold, or None: fully encrypted)
CASES = [
    ("random", RANDOM, None),
    ("tls-client-hello", python_client_hello(), "ex"),
    ("http-request", http_client_request("news.test", "/"), "ex2"),
    ("mostly-zeros", bytes(500) + RANDOM[:100], "ex1"),
    ("all-ones", b"\xff" * 300, "ex1"),
    ("printable-prefix", b"abcdef" + RANDOM, "ex2"),
    (
        "exactly-half-printable",
        bytes(x for p in zip(RANDOM[:280], b"A1b2" * 70, strict=True) for x in p),
        None,
    ),
    (
        "over-half-printable",
        bytes(x for p in zip(RANDOM[:280], b"A1b2" * 70, strict=True) for x in p) + b"Z" * 19,
        "ex3",
    ),
    ("printable-run", RANDOM[:100] + b"x" * 21 + RANDOM[100:200], "ex4"),
    ("run-of-twenty-is-not-enough", RANDOM[:100] + b"x" * 20 + RANDOM[100:200], None),
    ("tls-record-header", b"\x17\x03\x03" + RANDOM, "ex5 tls"),
    ("tls-header-bad-version", b"\x17\x03\x0a" + RANDOM, None),
    ("http-method", b"POST " + RANDOM, "ex"),
]


@pytest.mark.parametrize(("name", "payload", "expected"), CASES, ids=[c[0] for c in CASES])
def test_exemptions(name: str, payload: bytes, expected: str | None) -> None:
    found = exemption(payload)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.startswith(expected), found


def test_the_analyzer_judges_the_clients_first_payload_only() -> None:
    analyzer = FullyEncryptedAnalyzer()
    assert analyzer.feed(b"SSH-2.0-server\r\n", from_client=False) == []
    (finding,) = analyzer.feed(RANDOM, from_client=True)
    assert (finding.key, finding.value.split(",")[0]) == ("fully-encrypted", "600 bytes")
    assert analyzer.done
    assert analyzer.feed(b"GET / HTTP/1.1\r\n", from_client=True) == []


def _verdict(profile: CensorProfile, payload: bytes) -> tuple[int | None, str, list[str]]:
    return box_verdict(profile, tcp_flow_packets(payload))


def test_the_box_drops_a_fully_encrypted_flow_and_lets_tls_through() -> None:
    profile = CensorProfile.from_dict({"fet": {"block": True}})
    mark, reason, suspected = _verdict(profile, RANDOM)
    assert mark == MARK_DROP
    assert reason.startswith("fet first payload fully encrypted (600 bytes")
    assert suspected == [reason]
    assert _verdict(profile, python_client_hello())[:2] == (MARK_ALLOW, "nothing to object to")


def test_flag_mode_and_off() -> None:
    flagged = CensorProfile.from_dict({"fet": {"block": True, "action": "flag"}})
    mark, _, suspected = _verdict(flagged, RANDOM)
    assert mark == MARK_ALLOW and suspected and suspected[0].startswith("fet ")
    mark, _, suspected = _verdict(CensorProfile(), RANDOM)
    assert (mark, suspected) == (MARK_ALLOW, [])


@pytest.mark.parametrize(("document", "message"), [
    ({"fet": {"block": "yes"}}, "[fet] block must be true or false"),
    ({"fet": {"block": True, "action": "rst"}}, "[fet] action must be one of"),
])  # fmt: skip
def test_bad_fet_rules_are_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError) as error:
        CensorProfile.from_dict(document)
    assert message in str(error.value)
