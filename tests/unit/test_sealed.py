"""Sealed broker requests (unwall.wire.sealed): HPKE to the broker's key, the answer under a
key only the client chose, every body a whole number of buckets."""

from __future__ import annotations

import pytest

from unwall.wire import sealed
from unwall.wire.bridgeline import BridgeLine, BridgeLineError

BROKER = sealed.derive_private_key("the operator's secret")
PUBLIC = BROKER.public_key()
NOW = 1_800_000_000.0


def test_a_request_and_its_answer_round_trip() -> None:
    body = b'{"version":1,"sdp":"v=0..."}'
    request, pending = sealed.seal_request(PUBLIC, "/v1/client/offer", body, NOW)
    opened = sealed.open_request(BROKER, request)
    assert (opened.path, opened.body, opened.sent_at) == ("/v1/client/offer", body, int(NOW))
    answer = sealed.seal_response(opened.pending, 503, b'{"error":"no_volunteer"}')
    assert sealed.open_response(pending, answer) == (503, b'{"error":"no_volunteer"}')


@pytest.mark.parametrize("size", [0, 100, 1500, 3000, 3900])
def test_offers_and_answers_of_any_sdp_size_are_one_bucket_both_ways(size: int) -> None:
    request, pending = sealed.seal_request(PUBLIC, "/v1/client/offer", b"x" * size, NOW)
    opened = sealed.open_request(BROKER, request)
    answer = sealed.seal_response(opened.pending, 200, b"y" * size)
    assert len(request) == len(answer) == sealed.BUCKET
    assert sealed.open_response(pending, answer) == (200, b"y" * size)


def test_a_large_body_takes_whole_buckets() -> None:
    request, _ = sealed.seal_request(PUBLIC, "/v1/client/offer", b"x" * 10_000, NOW)
    assert len(request) == 3 * sealed.BUCKET
    assert len(request) <= sealed.max_sealed_size(10_000)


def test_only_the_brokers_key_opens_a_request() -> None:
    request, _ = sealed.seal_request(PUBLIC, "/v1/client/offer", b"{}", NOW)
    other = sealed.derive_private_key("another operator")
    with pytest.raises(sealed.SealError, match="not sealed to this broker's key"):
        sealed.open_request(other, request)
    with pytest.raises(sealed.SealError, match="multiple of 4096"):
        sealed.open_request(BROKER, request[:-1])
    tampered = bytearray(request)
    tampered[100] ^= 1
    with pytest.raises(sealed.SealError):
        sealed.open_request(BROKER, bytes(tampered))


def test_an_answer_opens_only_for_the_request_it_answers() -> None:
    first, pending_first = sealed.seal_request(PUBLIC, "/v1/client/offer", b"a", NOW)
    _, pending_second = sealed.seal_request(PUBLIC, "/v1/client/offer", b"b", NOW)
    answer = sealed.seal_response(sealed.open_request(BROKER, first).pending, 200, b"{}")
    with pytest.raises(sealed.SealError, match="not sealed by the broker we asked"):
        sealed.open_response(pending_second, answer)
    forged = bytes(sealed.BUCKET)  # anyone between, answering with a body of the right size
    with pytest.raises(sealed.SealError):
        sealed.open_response(pending_first, forged)
    with pytest.raises(sealed.SealError, match="is not one"):
        sealed.open_response(pending_first, b"<h1>502</h1>")


def test_the_guard_refuses_replays_and_far_clocks() -> None:
    guard = sealed.ReplayGuard()
    request, _ = sealed.seal_request(PUBLIC, "/v1/client/offer", b"{}", NOW)
    opened = sealed.open_request(BROKER, request)
    guard.check(opened, NOW + 5)
    with pytest.raises(sealed.Replayed):
        guard.check(opened, NOW + 6)
    # long after, the time itself refuses it (the guard has forgotten it by then)
    with pytest.raises(sealed.StaleRequest, match="minutes behind the broker's"):
        guard.check(opened, NOW + 3 * sealed.CLOCK_SKEW)
    ahead, _ = sealed.seal_request(PUBLIC, "/v1/client/offer", b"{}", NOW + 3600)
    with pytest.raises(sealed.StaleRequest, match="60 minutes ahead of the broker's"):
        guard.check(sealed.open_request(BROKER, ahead), NOW)


def test_the_guard_forgets_the_oldest_beyond_its_limit() -> None:
    guard = sealed.ReplayGuard(limit=2)
    opened = [
        sealed.open_request(BROKER, sealed.seal_request(PUBLIC, "/p", b"", NOW)[0])
        for _ in range(3)
    ]
    for one in opened:
        guard.check(one, NOW)
    guard.check(opened[0], NOW)  # forgotten: the limit bounds the broker's memory
    with pytest.raises(sealed.Replayed):
        guard.check(opened[2], NOW)


def test_keys_are_derived_from_the_secret_and_written_as_text() -> None:
    text = sealed.public_key_text("the operator's secret")
    assert text == sealed.format_public_key(PUBLIC)
    assert text.startswith("x25519:") and len(text) == 7 + 43
    assert sealed.public_key_text("another") != text
    assert sealed.normalize_public_key(text) == text
    for bad, why in [
        ("ed25519:" + "A" * 43, "starts with 'x25519:'"),
        ("x25519:" + "A" * 42, "43 base64url"),
        ("x25519:" + "!" * 43, "base64url"),
    ]:
        with pytest.raises(ValueError, match=why):
            sealed.parse_public_key(bad)


def test_a_path_is_short_ascii() -> None:
    with pytest.raises(ValueError):
        sealed.seal_request(PUBLIC, "/" + "x" * 64, b"", NOW)


PIN = "sha256:" + "A" * 43


def test_the_bridge_line_carries_the_broker_key() -> None:
    key = sealed.public_key_text("s")
    line = BridgeLine("https://broker.example/", PIN, ("https://cdn.example/",), key)
    assert f" brokerkey={key}" in line.format()
    assert BridgeLine.parse(line.format()) == line
    # a line without one still parses (old lines): offers then go unsealed
    assert BridgeLine.parse(f"unwall1 broker=https://b.example/ pin={PIN}").broker_key is None
    with pytest.raises(BridgeLineError, match="brokerkey: a broker key is 32 bytes"):
        BridgeLine.parse(f"unwall1 broker=https://b.example/ pin={PIN} brokerkey=x25519:AAAA")
