"""TURN credentials: minted by the broker (coturn's REST API scheme), or given to a peer."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from unwall.broker.turn import TurnIssuer, make_issuer, turn_password
from unwall.transport import webrtc
from unwall.transport.aiortc_engine import engine
from unwall.wire.broker import TurnServer

URLS = ("turn:203.0.113.5:3478",)


def test_password_is_base64_hmac_sha1_of_the_username() -> None:
    username = "1700000000:abc"
    expected = base64.b64encode(hmac.new(b"key", username.encode(), hashlib.sha1).digest())
    assert turn_password("key", username) == expected.decode()
    assert len(turn_password("key", username)) == 28  # 20 bytes of SHA-1


def test_username_is_expiry_then_a_random_id() -> None:
    issuer = TurnIssuer("key", URLS, ttl=600)
    first, second = issuer.issue(1_700_000_000.7), issuer.issue(1_700_000_000.7)
    assert first.username.startswith("1700000600:")
    assert first.username != second.username
    assert first.credential == turn_password("key", first.username)
    assert first.urls == URLS


@pytest.mark.parametrize(
    ("secret", "urls", "ttl", "phrase"),
    [
        (None, URLS, 60.0, "--turn-url needs --turn-secret"),
        ("", URLS, 60.0, "must not be empty"),
        ("key", (), 60.0, "at least one TURN URL"),
        ("key", ("stun:203.0.113.5:3478",), 60.0, "not a turn: or turns: URL"),
        ("key", URLS, 0.0, "lifetime must be positive"),
        ("key", URLS, 86400.0, "at most 3600 s"),  # a day: a harvested one kept its worth
    ],
)
def test_make_issuer_refuses(
    secret: str | None, urls: tuple[str, ...], ttl: float, phrase: str
) -> None:
    with pytest.raises(ValueError, match=phrase):
        make_issuer(secret, urls, ttl)


def test_credentials_live_minutes_not_a_day() -> None:
    issuer = TurnIssuer("key", URLS)
    assert issuer.ttl == 600
    expiry = int(issuer.issue(1_700_000_000.0).username.split(":")[0])
    assert expiry == 1_700_000_600


def test_no_secret_no_issuer() -> None:
    assert make_issuer(None, ()) is None
    assert make_issuer("key", URLS) == TurnIssuer("key", URLS)


# -- the client's and volunteer's own TURN servers (aiortc_engine) ------------------------


def test_turn_credentials_go_with_every_turn_url() -> None:
    urls = ["stun:203.0.113.5:3478", "turn:203.0.113.5:3478", "turns:203.0.113.5:5349"]
    servers = webrtc.ice_servers_with_credentials(urls, "alice", "pw")
    assert servers == [
        "stun:203.0.113.5:3478",
        TurnServer(("turn:203.0.113.5:3478", "turns:203.0.113.5:5349"), "alice", "pw"),
    ]
    assert webrtc.has_turn(servers)
    assert webrtc.describe_ice_servers(servers) == urls  # never the password
    config = engine.rtc_configuration(servers)
    assert [(s.urls, s.username, s.credential) for s in config.iceServers] == [
        ("stun:203.0.113.5:3478", None, None),
        (["turn:203.0.113.5:3478", "turns:203.0.113.5:5349"], "alice", "pw"),
    ]


def test_without_credentials_the_urls_stay_as_they_are() -> None:
    urls = ["stun:203.0.113.5:3478"]
    assert webrtc.ice_servers_with_credentials(urls) == urls
    assert not webrtc.has_turn(urls)
    assert webrtc.has_turn(["turn:203.0.113.5:3478"])


@pytest.mark.parametrize(
    ("urls", "user", "password", "phrase"),
    [
        (["turn:203.0.113.5:3478"], "alice", None, "go together"),
        (["turn:203.0.113.5:3478"], None, "pw", "go together"),
        (["stun:203.0.113.5:3478"], "alice", "pw", "needs a TURN server"),
    ],
)
def test_turn_credentials_refused(
    urls: list[str], user: str | None, password: str | None, phrase: str
) -> None:
    with pytest.raises(ValueError, match=phrase):
        webrtc.ice_servers_with_credentials(urls, user, password)
