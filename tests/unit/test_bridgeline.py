"""The bridge line (protocol.md §6): `unwall1 broker=URL pin=sha256:...`, key=value fields."""

from __future__ import annotations

import base64

import pytest

from unwall.wire.bridgeline import PREFIX, BridgeLine, BridgeLineError

DIGEST = bytes(range(32))
PIN = "sha256:" + base64.urlsafe_b64encode(DIGEST).rstrip(b"=").decode("ascii")
# A digest whose base64 holds both URL-safe characters ('-' and '_').
PIN_URLSAFE = "sha256:" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).rstrip(b"=").decode()
BROKER = "https://broker.example/"


def test_pins_are_canonical_base64url() -> None:
    assert len(PIN) == len("sha256:") + 43
    assert "-" in PIN_URLSAFE and "_" in PIN_URLSAFE


# -- round trip ------------------------------------------------------------------------------

ROUND_TRIP = [
    BROKER,
    "http://127.0.0.1:8080/",
    "http://127.0.0.1:8080",
    "https://[2001:db8::1]:8443/unwall/",
    "https://broker.example/path?a=1&b=2",
    "https://user@broker.example/",
    "https://broker.example/with space/",
    # a URL that already holds a percent escape
    "https://broker.example/a%20b",
]


@pytest.mark.parametrize("broker", ROUND_TRIP)
@pytest.mark.parametrize("pin", [PIN, PIN_URLSAFE])
def test_round_trip(broker: str, pin: str) -> None:
    line = BridgeLine(broker=broker, pin=pin)
    text = line.format()
    assert text.startswith(PREFIX + " ")
    assert "\n" not in text
    # one line of space-separated key=value fields: no raw spaces inside a value
    words = text.split(" ")
    assert words[0] == PREFIX
    assert all("=" in word for word in words[1:])
    assert BridgeLine.parse(text) == line


def test_format_shape() -> None:
    assert BridgeLine(broker=BROKER, pin=PIN).format() == f"unwall1 broker={BROKER} pin={PIN}"


def test_format_percent_encodes_spaces() -> None:
    text = BridgeLine(broker="https://b.example/a b/", pin=PIN).format()
    assert "broker=https://b.example/a%20b/" in text
    assert len(text.split()) == 3


# -- parsing ---------------------------------------------------------------------------------

# (line, expected broker, expected pin)
ACCEPTED = [
    (f"unwall1 broker={BROKER} pin={PIN}", BROKER, PIN),
    (f"unwall1 pin={PIN} broker={BROKER}", BROKER, PIN),  # order does not matter
    (f"  unwall1   broker={BROKER}\tpin={PIN}  \n", BROKER, PIN),  # any whitespace
    # percent-encoded values are decoded
    (f"unwall1 broker=https://b.example/a%20b/ pin={PIN}", "https://b.example/a b/", PIN),
    (f"unwall1 broker=https%3A%2F%2Fb.example%2F pin={PIN}", "https://b.example/", PIN),
    (f"unwall1 broker={BROKER} pin=sha256%3A{PIN[7:]}", BROKER, PIN),
    # a value may itself hold '='
    (f"unwall1 broker=https://b.example/?a=b pin={PIN}", "https://b.example/?a=b", PIN),
    # a padded pin is made canonical (unpadded)
    (f"unwall1 broker={BROKER} pin={PIN}=", BROKER, PIN),
    (f"unwall1 broker=http://127.0.0.1:9/ pin={PIN_URLSAFE}", "http://127.0.0.1:9/", PIN_URLSAFE),
]


@pytest.mark.parametrize(("line", "broker", "pin"), ACCEPTED)
def test_parse_accepts(line: str, broker: str, pin: str) -> None:
    parsed = BridgeLine.parse(line)
    assert parsed.broker == broker
    assert parsed.pin == pin


# (line, words the error message must hold)
REJECTED = [
    # wrong or missing prefix
    ("", ["unwall1"]),
    ("   ", ["unwall1"]),
    (f"unwall2 broker={BROKER} pin={PIN}", ["unwall1"]),
    (f"UNWALL1 broker={BROKER} pin={PIN}", ["unwall1"]),
    (f"broker={BROKER} pin={PIN}", ["unwall1"]),
    (f"unwall1broker={BROKER} pin={PIN}", ["unwall1"]),
    ("garbage", ["unwall1", "garbage"]),
    # missing fields
    ("unwall1", ["broker", "pin"]),
    (f"unwall1 pin={PIN}", ["broker"]),
    (f"unwall1 broker={BROKER}", ["pin"]),
    (f"unwall1 brokers={BROKER} pins={PIN}", ["brokers", "not one this unwall knows"]),
    # unknown keys: a typo, or a line for a newer unwall (nothing is guessed)
    (f"unwall1 broker={BROKER} pin={PIN} future=1", ["'future'", "newer unwall"]),
    (f"unwall1 v=2 broker={BROKER} pin={PIN}", ["'v'", "broker, pin, front, brokerkey, ice"]),
    (f"unwall1 broker={BROKER} pin={PIN} pin={PIN}", ["'pin'", "twice"]),
    # ICE servers: URLs, never credentials
    (f"unwall1 broker={BROKER} pin={PIN} ice=http://x/", ["ice", "stun:, turn: or turns:"]),
    (f"unwall1 broker={BROKER} pin={PIN} ice=turn:u:p@t.example", ["without credentials"]),
    (f"unwall1 broker={BROKER} pin={PIN}" + " ice=stun:s.example" * 9, ["at most 8 ICE"]),
    # a field that is not key=value
    (f"unwall1 broker={BROKER} pin={PIN} stray", ["stray", "key=value"]),
    # broker not http(s)
    (f"unwall1 broker=ftp://b.example/ pin={PIN}", ["broker", "http"]),
    (f"unwall1 broker=ws://b.example/ pin={PIN}", ["broker", "http"]),
    (f"unwall1 broker=b.example pin={PIN}", ["broker", "http"]),
    (f"unwall1 broker= pin={PIN}", ["broker", "http"]),
    # bad pin: prefix, length, alphabet
    (f"unwall1 broker={BROKER} pin=", ["pin", "sha256:"]),
    (f"unwall1 broker={BROKER} pin={PIN[7:]}", ["pin", "sha256:"]),
    (f"unwall1 broker={BROKER} pin=sha1:{PIN[7:]}", ["pin", "sha256:"]),
    (f"unwall1 broker={BROKER} pin=sha256:", ["pin", "sha256:"]),
    (f"unwall1 broker={BROKER} pin={PIN[:-4]}", ["pin", "32-byte"]),  # 29 bytes
    (f"unwall1 broker={BROKER} pin={PIN}AAAA", ["pin", "32-byte"]),  # 35 bytes
    (f"unwall1 broker={BROKER} pin={PIN[:-1]}", ["pin"]),  # 42 characters
    (f"unwall1 broker={BROKER} pin={PIN}A", ["pin"]),  # 44 characters: bad padding
    (
        f"unwall1 broker={BROKER} pin=sha256:" + base64.b64encode(bytes(16)).decode(),
        ["pin", "32-byte"],
    ),
    (f"unwall1 broker={BROKER} pin={PIN[:-1]}!", ["pin", "base64url"]),
    (f"unwall1 broker={BROKER} pin=sha256:{'!' * 43}", ["pin"]),
]


@pytest.mark.parametrize(("line", "words"), REJECTED)
def test_parse_rejects(line: str, words: list[str]) -> None:
    with pytest.raises(BridgeLineError) as caught:
        BridgeLine.parse(line)
    message = str(caught.value)
    for word in words:
        assert word in message, message


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unwall1"):
        BridgeLine.parse("nonsense")


def test_long_garbage_is_truncated_in_the_message() -> None:
    with pytest.raises(BridgeLineError) as caught:
        BridgeLine.parse("x" * 1000)
    assert len(str(caught.value)) < 200


# A pin with characters outside the base64url alphabet must be refused, not silently
# cleaned: urlsafe_b64decode discards such characters (validate=False), so a pin with four
# of them (keeping the length a multiple of four) decodes to the right 32 bytes.
JUNK_PINS = [
    PIN + "****",
    PIN[:12] + "!!!!" + PIN[12:],
    PIN + "....",
    PIN[:20] + "\x00\x00\x00\x00" + PIN[20:],
]


@pytest.mark.parametrize("pin", JUNK_PINS)
def test_pin_outside_base64url_alphabet_is_rejected(pin: str) -> None:
    with pytest.raises(BridgeLineError):
        BridgeLine.parse(f"unwall1 broker={BROKER} pin={pin}")


# -- fronts: none, one or several ------------------------------------------------------------

FRONT_A, FRONT_B = "https://cdn-a.example/", "https://cdn-b.example/edge path/"


@pytest.mark.parametrize("fronts", [(), (FRONT_A,), (FRONT_A, FRONT_B)])
def test_fronts_round_trip_in_order(fronts: tuple[str, ...]) -> None:
    line = BridgeLine(broker=BROKER, pin=PIN, fronts=fronts)
    text = line.format()
    assert text.count(" front=") == len(fronts)
    assert BridgeLine.parse(text) == line


def test_a_line_with_one_front_parses_as_before() -> None:
    line = BridgeLine.parse(f"unwall1 broker={BROKER} pin={PIN} front={FRONT_A}")
    assert line.fronts == (FRONT_A,)


@pytest.mark.parametrize(
    ("fronts", "message"),
    [
        (["http://cdn.example/"], "must be an https:// URL"),
        ([FRONT_A, FRONT_A], "names one front twice"),
        ([f"https://cdn{i}.example/" for i in range(17)], "at most 16 fronts"),
    ],
)
def test_bad_fronts_are_refused(fronts: list[str], message: str) -> None:
    text = f"unwall1 broker={BROKER} pin={PIN} " + " ".join(f"front={f}" for f in fronts)
    with pytest.raises(BridgeLineError, match=message):
        BridgeLine.parse(text)


def test_a_line_carries_everything_a_client_needs() -> None:
    """Broker, pin, fronts, the broker's key and ICE servers (TURN without credentials):
    one line, and it round-trips."""
    line = BridgeLine(
        BROKER,
        PIN,
        ("https://cdn-a.example/", "https://cdn-b.example/"),
        "x25519:" + "A" * 43,
        ("stun:stun.example:3478", "turns:turn.example:443?transport=tcp"),
    )
    text = line.format()
    assert " ice=stun:stun.example:3478 ice=turns:turn.example:443?transport=tcp" in text
    assert BridgeLine.parse(text) == line
