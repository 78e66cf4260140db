"""Broker messages: round trips and every validation error (docs/protocol.md section 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from unwall.wire.broker import (
    ERROR_STATUS,
    MAX_BODY,
    MAX_SDP,
    PROTOCOL_VERSION,
    AnswerAccepted,
    BrokerError,
    ClientAnswer,
    ClientOffer,
    Message,
    MessageError,
    PollIdle,
    PollOffer,
    TurnServer,
    VolunteerAnswer,
    VolunteerPoll,
    decode_answer_accepted,
    decode_client_answer,
    decode_client_offer,
    decode_error,
    decode_poll_response,
    decode_volunteer_answer,
    decode_volunteer_poll,
    encode,
)

# A minimal data-channel offer: what the decoders must accept.
SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=sctp-port:5000\r\n"
    "a=max-message-size:65536\r\n"
)
# The shape a browser sends: ICE and DTLS attributes, and an audio section before the data one.
BROWSER_SDP = (
    "v=0\r\n"
    "o=- 8126415938021559734 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "a=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Xk2p\r\n"
    "a=ice-pwd:q7Zl0h3yT5mB9vW1cR8sN4eD\r\n"
    "a=fingerprint:sha-256 "
    "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF\r\n"
    "a=setup:actpass\r\n"
    "a=mid:1\r\n"
    "a=sctp-port:5000\r\n"
    "a=max-message-size:262144\r\n"
)
VID = "k3Jf9abc_-XY"
TURN = TurnServer(
    ("turn:203.0.113.5:3478", "turn:203.0.113.5:3478?transport=tcp"),
    "1700000000:Qx9_kd",
    "b64/+==",
)
TURN_JSON = {"urls": list(TURN.urls), "username": TURN.username, "credential": TURN.credential}

Decoder = Callable[[bytes], Any]


def body(**fields: Any) -> bytes:
    return json.dumps({"version": 1, **fields}, ensure_ascii=False).encode()


def sized_sdp(size: int, fill: str = "x") -> str:
    """:data:`SDP` with an attribute line padded so the whole is exactly ``size`` UTF-8 bytes."""
    head, tail = SDP + "a=x-pad:", "\r\n"
    room = size - len((head + tail).encode())
    count, rest = divmod(room, len(fill.encode()))
    sdp = head + fill * count + "x" * rest + tail
    assert len(sdp.encode()) == size
    return sdp


def poll_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "volunteer_id": VID,
        "capacity": 8,
        "clients": 2,
        "kind": "headless",
    }
    fields.update(changes)
    return fields


def answer_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"volunteer_id": VID, "offer_id": "b64url_-0", "sdp": SDP}
    fields.update(changes)
    return fields


ROUND_TRIPS: list[tuple[Message, Decoder]] = [
    (VolunteerPoll(VID, 8, 2, "headless"), decode_volunteer_poll),
    (VolunteerPoll("a" * 64, 1000, 0, "browser"), decode_volunteer_poll),
    (VolunteerPoll("12345678", 1, 5000, "headless"), decode_volunteer_poll),
    (VolunteerPoll(VID, 8, 2, "headless", "symmetric"), decode_volunteer_poll),
    (VolunteerPoll(VID, 8, 2, "headless", "full-cone", relay=True), decode_volunteer_poll),
    (PollOffer("b64url_-0", SDP), decode_poll_response),
    (PollOffer("b64url_-0", SDP, (TURN, TURN)), decode_poll_response),
    (PollOffer("b64url_-0", SDP, ticket="T" * 255), decode_poll_response),
    (PollIdle(), decode_poll_response),
    (PollIdle((TURN,)), decode_poll_response),
    (VolunteerAnswer(VID, "x", SDP), decode_volunteer_answer),
    (AnswerAccepted(), decode_answer_accepted),
    (ClientOffer(SDP), decode_client_offer),
    (ClientOffer(BROWSER_SDP), decode_client_offer),
    (ClientOffer(SDP, "port-restricted"), decode_client_offer),
    (ClientOffer(SDP, "symmetric", relay=True), decode_client_offer),
    (ClientOffer(SDP.replace("s=-", "s=é ü \u2603")), decode_client_offer),
    (ClientOffer(sized_sdp(MAX_SDP)), decode_client_offer),
    (ClientOffer(sized_sdp(MAX_SDP, fill="\u00e9")), decode_client_offer),
    (ClientAnswer(SDP), decode_client_answer),
    (ClientAnswer(SDP, ticket="a-Ticket_0"), decode_client_answer),
    (ClientOffer(SDP, commitment=bytes(range(32))), decode_client_offer),
    (BrokerError("no_volunteer", "try again later"), decode_error),
    (BrokerError("unsupported_version", "use version 1", (1,)), decode_error),
    (BrokerError("a_future_code", ""), decode_error),
]


@pytest.mark.parametrize(("msg", "decode"), ROUND_TRIPS, ids=lambda v: type(v).__name__)
def test_round_trip(msg: Message, decode: Decoder) -> None:
    data = encode(msg)
    assert json.loads(data)["version"] == PROTOCOL_VERSION
    assert decode(data) == msg


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (
            VolunteerPoll(VID, 8, 2, "headless"),
            {"volunteer_id": VID, "capacity": 8, "clients": 2, "kind": "headless"},
        ),
        (PollOffer("o1", "v=0"), {"status": "offer", "offer_id": "o1", "sdp": "v=0"}),
        (PollIdle(), {"status": "idle"}),
        (VolunteerAnswer(VID, "o1", "v=0"), {"volunteer_id": VID, "offer_id": "o1", "sdp": "v=0"}),
        (AnswerAccepted(), {"status": "ok"}),
        (ClientOffer("v=0"), {"sdp": "v=0"}),
        # Optional fields are sent only when they differ from what their absence means.
        (ClientOffer("v=0", "unknown", relay=False), {"sdp": "v=0"}),
        (
            ClientOffer("v=0", "restricted", relay=True),
            {"sdp": "v=0", "nat": "restricted", "relay": True},
        ),
        (
            VolunteerPoll(VID, 8, 2, "browser", "none"),
            {"volunteer_id": VID, "capacity": 8, "clients": 2, "kind": "browser", "nat": "none"},
        ),
        (PollIdle((TURN,)), {"status": "idle", "turn": [TURN_JSON]}),
        (
            PollOffer("o1", "v=0", (TURN,)),
            {"status": "offer", "offer_id": "o1", "sdp": "v=0", "turn": [TURN_JSON]},
        ),
        (ClientAnswer("v=0"), {"status": "answer", "sdp": "v=0"}),
        (BrokerError("too_large", "smaller"), {"error": "too_large", "message": "smaller"}),
        (
            BrokerError("unsupported_version", "v1", (1,)),
            {"error": "unsupported_version", "message": "v1", "supported": [1]},
        ),
    ],
)
def test_encode_matches_protocol_md(msg: Message, expected: dict[str, Any]) -> None:
    assert json.loads(encode(msg)) == {"version": 1, **expected}


def test_encode_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]


def test_unknown_fields_are_ignored() -> None:
    assert decode_client_offer(body(sdp=SDP, future_field=[1, 2])) == ClientOffer(SDP)


def test_decoders_accept_bytearray_and_memoryview() -> None:
    data = encode(ClientOffer(SDP))
    assert decode_client_offer(bytearray(data)) == ClientOffer(SDP)  # type: ignore[arg-type]
    assert decode_client_offer(memoryview(data)) == ClientOffer(SDP)  # type: ignore[arg-type]


BAD = "bad_request"
UNSUPPORTED = "unsupported_version"
TOO_LARGE = "too_large"

# (decoder, body, expected code, a phrase the message must contain)
INVALID: list[tuple[Decoder, bytes, str, str]] = [
    # -- the envelope, the same for every decoder
    (decode_client_offer, b"", BAD, "not JSON"),
    (decode_client_offer, b"{", BAD, "not JSON"),
    (decode_client_offer, b"sdp=v%3D0", BAD, "not JSON"),
    (decode_client_offer, b'{"version": 1, "sdp": "x"} trailing', BAD, "not JSON"),
    (decode_client_offer, b'{"version": NaN, "sdp": "x"}', BAD, "NaN"),
    (decode_client_offer, b'{"version": 1, "sdp": "\xff"}', BAD, "not UTF-8"),
    (decode_client_offer, b"[" * 100_000 + b"]" * 100_000, TOO_LARGE, "limit"),
    (decode_client_offer, b"[" * 30_000 + b"]" * 30_000, BAD, "not JSON"),
    (decode_client_offer, b'{"version": 1, "sdp": 1' + b"0" * 5000 + b"}", BAD, "not JSON"),
    (decode_client_offer, b"[]", BAD, "JSON object, not an array"),
    (decode_client_offer, b'"v=0"', BAD, "JSON object, not a string"),
    (decode_client_offer, b"null", BAD, "JSON object, not null"),
    (decode_client_offer, b'{"sdp": "v=0"}', BAD, "'version' is missing"),
    (decode_client_offer, body(version="1", sdp=SDP), BAD, "'version' must be an integer"),
    (decode_client_offer, body(version=1.0, sdp=SDP), BAD, "'version' must be an integer"),
    (decode_client_offer, body(version=True, sdp=SDP), BAD, "'version' must be an integer"),
    (decode_client_offer, body(version=None, sdp=SDP), BAD, "'version' must be an integer"),
    (decode_client_offer, body(version=2, sdp=SDP), UNSUPPORTED, "version 2"),
    (decode_client_offer, body(version=0), UNSUPPORTED, "use version 1"),
    (decode_volunteer_poll, body(version=2), UNSUPPORTED, "version 2"),
    (decode_poll_response, body(version=-1), UNSUPPORTED, "version -1"),
    (decode_error, body(version=2, error="x", message="y"), UNSUPPORTED, "version 2"),
    # -- sdp
    (decode_client_offer, body(), BAD, "'sdp' is missing"),
    (decode_client_offer, body(sdp=None), BAD, "'sdp' must be a string, not null"),
    (decode_client_offer, body(sdp=5), BAD, "'sdp' must be a string, not a number"),
    (decode_client_offer, body(sdp=["v=0"]), BAD, "not an array"),
    (decode_client_offer, body(sdp={"type": "offer"}), BAD, "not an object"),
    (decode_client_offer, body(sdp=""), BAD, "'sdp' must not be empty"),
    (decode_client_offer, body(sdp=sized_sdp(MAX_SDP + 1)), BAD, "is 32769 bytes; the limit"),
    # Bytes, not characters: far fewer than MAX_SDP characters, but one byte too many.
    (decode_client_offer, body(sdp=sized_sdp(MAX_SDP + 1, "\u00e9")), BAD, "limit is 32768"),
    (decode_client_offer, b'{"version": 1, "sdp": "\\ud800"}', BAD, "surrogate"),
    # -- volunteer poll
    (decode_volunteer_poll, body(**poll_fields(volunteer_id=None)), BAD, "'volunteer_id'"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="short")), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="a" * 65)), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="abc.defgh")), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="abcdefgh\n")), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="abcdéfgh")), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(volunteer_id="abcd efgh")), BAD, "8 to 64"),
    (decode_volunteer_poll, body(**poll_fields(capacity=0)), BAD, "'capacity' must be 1 to 1000"),
    (decode_volunteer_poll, body(**poll_fields(capacity=1001)), BAD, "1 to 1000"),
    (decode_volunteer_poll, body(**poll_fields(capacity=-3)), BAD, "1 to 1000"),
    (decode_volunteer_poll, body(**poll_fields(capacity=8.0)), BAD, "must be an integer"),
    (decode_volunteer_poll, body(**poll_fields(capacity="8")), BAD, "must be an integer"),
    (decode_volunteer_poll, body(**poll_fields(capacity=True)), BAD, "must be an integer"),
    (decode_volunteer_poll, body(**poll_fields(clients=-1)), BAD, "'clients' must be at least 0"),
    (decode_volunteer_poll, body(**poll_fields(clients=None)), BAD, "'clients' must be an int"),
    (decode_volunteer_poll, body(**poll_fields(kind="phone")), BAD, "'headless' or 'browser'"),
    (decode_volunteer_poll, body(**poll_fields(kind="Headless")), BAD, "'kind'"),
    (decode_volunteer_poll, body(**poll_fields(kind=1)), BAD, "'kind' must be a string"),
    (decode_volunteer_poll, body(**poll_fields(nat="cone")), BAD, "'nat' must be one of none,"),
    (decode_volunteer_poll, body(**poll_fields(nat=None)), BAD, "'nat' must be a string"),
    (decode_volunteer_poll, body(**poll_fields(relay=1)), BAD, "'relay' must be true or false"),
    (decode_client_offer, body(sdp=SDP, nat="Symmetric"), BAD, "'nat' must be one of"),
    (decode_client_offer, body(sdp=SDP, relay="yes"), BAD, "'relay' must be true or false"),
    (decode_client_offer, body(sdp=SDP, relay=None), BAD, "not null"),
    *[
        (
            decode_volunteer_poll,
            body(**{k: v for k, v in poll_fields().items() if k != name}),
            BAD,
            f"'{name}' is missing",
        )
        for name in ("volunteer_id", "capacity", "clients", "kind")
    ],
    # -- volunteer answer
    (decode_volunteer_answer, body(**answer_fields(offer_id="")), BAD, "'offer_id' must be 1 to"),
    (decode_volunteer_answer, body(**answer_fields(offer_id="a/b")), BAD, "'offer_id'"),
    (decode_volunteer_answer, body(**answer_fields(offer_id="a" * 129)), BAD, "'offer_id'"),
    (decode_volunteer_answer, body(**answer_fields(offer_id=7)), BAD, "'offer_id' must be a str"),
    (decode_volunteer_answer, body(**answer_fields(volunteer_id="x")), BAD, "'volunteer_id'"),
    (decode_volunteer_answer, body(**answer_fields(sdp="")), BAD, "'sdp' must not be empty"),
    *[
        (
            decode_volunteer_answer,
            body(**{k: v for k, v in answer_fields().items() if k != name}),
            BAD,
            f"'{name}' is missing",
        )
        for name in ("volunteer_id", "offer_id", "sdp")
    ],
    # -- responses
    (decode_poll_response, body(), BAD, "'status' is missing"),
    (decode_poll_response, body(status="answer", sdp=SDP), BAD, "'offer' or 'idle'"),
    (decode_poll_response, body(status="offer", sdp=SDP), BAD, "'offer_id' is missing"),
    (decode_poll_response, body(status="offer", offer_id="o1"), BAD, "'sdp' is missing"),
    (decode_poll_response, body(status="idle", turn={}), BAD, "'turn' must be a list"),
    (decode_poll_response, body(status="idle", turn=[TURN_JSON] * 5), BAD, "at most 4"),
    (decode_poll_response, body(status="idle", turn=["turn:x"]), BAD, "must be an object"),
    *[
        (decode_poll_response, body(status="idle", turn=[{**TURN_JSON, **bad}]), BAD, phrase)
        for bad, phrase in [
            ({"urls": "turn:x:1"}, "urls must be a list"),
            ({"urls": []}, "urls must be a list of 1 to 8"),
            ({"urls": ["stun:x:1"]}, "turn: or turns: URLs"),
            ({"urls": ["turn:a b"]}, "turn: or turns: URLs"),
            ({"urls": [7]}, "turn: or turns: URLs"),
            ({"username": None}, "'username' must be a string"),
            ({"credential": 5}, "'credential' must be a string"),
            ({"credential": "x" * 513}, "longer than 512"),
        ]
    ],
    (decode_answer_accepted, body(status="idle"), BAD, "'ok'"),
    (decode_client_answer, body(status="ok"), BAD, "'answer'"),
    (decode_client_answer, body(status="answer"), BAD, "'sdp' is missing"),
    (decode_client_answer, body(status="answer", sdp=""), BAD, "must not be empty"),
    (decode_error, body(message="m"), BAD, "'error' is missing"),
    (decode_error, body(error="", message="m"), BAD, "'error' must not be empty"),
    (decode_error, body(error="x"), BAD, "'message' is missing"),
    (decode_error, body(error="x", message="m", supported=1), BAD, "'supported'"),
    (decode_error, body(error="x", message="m", supported=["1"]), BAD, "'supported'"),
    (decode_error, body(error="x", message="m", supported=[True]), BAD, "'supported'"),
]


@pytest.mark.parametrize(("decode", "data", "code", "phrase"), INVALID)
def test_invalid(decode: Decoder, data: bytes, code: str, phrase: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(data)
    assert info.value.code == code
    assert phrase in info.value.message
    assert str(info.value) == info.value.message


# Every message that carries an SDP, as (decoder, a body around a given SDP).
SDP_CARRIERS = [
    pytest.param(decode_client_offer, lambda sdp: body(sdp=sdp), id="client_offer"),
    pytest.param(
        decode_volunteer_answer, lambda sdp: body(**answer_fields(sdp=sdp)), id="volunteer_answer"
    ),
    pytest.param(
        decode_poll_response,
        lambda sdp: body(status="offer", offer_id="o1", sdp=sdp),
        id="poll_response",
    ),
    pytest.param(
        decode_client_answer, lambda sdp: body(status="answer", sdp=sdp), id="client_answer"
    ),
]

NOT_SESSION = "is not a session description (it must start with 'v=0')"
NO_DATA_CHANNEL = "has no data channel section (m=application ... webrtc-datachannel)"
DATA_M_LINE = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"

# (a malformed SDP, what the message must say is wrong with it)
BAD_SDP = [
    # -- does not start with v=0
    pytest.param("hello", NOT_SESSION, id="not-sdp"),
    pytest.param(SDP.removeprefix("v=0\r\n"), NOT_SESSION, id="no-v-line"),
    pytest.param("v=1" + SDP.removeprefix("v=0"), NOT_SESSION, id="v=1"),
    pytest.param("V" + SDP.removeprefix("v"), NOT_SESSION, id="upper-case-V"),
    pytest.param(" " + SDP, NOT_SESSION, id="leading-space"),
    pytest.param("\r\n" + SDP, NOT_SESSION, id="leading-blank-line"),
    pytest.param(
        json.dumps({"type": "offer", "sdp": SDP}), NOT_SESSION, id="RTCSessionDescription-json"
    ),
    # -- no m=application line
    pytest.param(SDP.split("m=")[0], NO_DATA_CHANNEL, id="session-part-only"),
    pytest.param(
        SDP.replace(DATA_M_LINE, "m=audio 9 UDP/TLS/RTP/SAVPF 111"), NO_DATA_CHANNEL, id="audio"
    ),
    pytest.param(
        SDP.replace(DATA_M_LINE, "m=video 9 UDP/DTLS/SCTP webrtc-datachannel"),
        NO_DATA_CHANNEL,
        id="datachannel-on-video",
    ),
    # -- an m=application line, but not for a WebRTC data channel
    pytest.param(
        SDP.replace(DATA_M_LINE, "m=application 9 UDP/DTLS/SCTP"), NO_DATA_CHANNEL, id="no-fmt"
    ),
    pytest.param(
        SDP.replace(DATA_M_LINE, "m=application 9 UDP/BFCP *"), NO_DATA_CHANNEL, id="bfcp"
    ),
    pytest.param(
        SDP.replace(DATA_M_LINE, "m=application 9 TCP/MSRP *"), NO_DATA_CHANNEL, id="msrp"
    ),
]


@pytest.mark.parametrize(("decode", "wrap"), SDP_CARRIERS)
@pytest.mark.parametrize("sdp", [SDP, BROWSER_SDP], ids=["minimal", "browser"])
def test_data_channel_sdp_is_accepted(
    decode: Decoder, wrap: Callable[[str], bytes], sdp: str
) -> None:
    assert decode(wrap(sdp)).sdp == sdp


@pytest.mark.parametrize(("decode", "wrap"), SDP_CARRIERS)
@pytest.mark.parametrize(("sdp", "problem"), BAD_SDP)
def test_sdp_that_is_no_data_channel_offer_is_bad_request(
    decode: Decoder, wrap: Callable[[str], bytes], sdp: str, problem: str
) -> None:
    with pytest.raises(MessageError) as info:
        decode(wrap(sdp))
    assert info.value.code == BAD
    assert info.value.message == f"field 'sdp' {problem}"


@pytest.mark.parametrize(
    "decode", [decode_volunteer_poll, decode_volunteer_answer, decode_client_offer]
)
def test_request_body_limit(decode: Decoder) -> None:
    """64 KiB is accepted; one byte more is too_large."""
    data = body(**{**poll_fields(), **answer_fields()})
    at_limit = data[:-1] + b" " * (MAX_BODY - len(data)) + b"}"
    assert len(at_limit) == MAX_BODY
    decode(at_limit)  # no error
    with pytest.raises(MessageError) as info:
        decode(at_limit[:-1] + b" }")
    assert info.value.code == "too_large"
    assert str(MAX_BODY) in info.value.message


def test_responses_may_exceed_the_request_limit() -> None:
    """The broker wraps an SDP from a request that was within the limit in more fields."""
    # Each \x01 becomes \u0001 in JSON: six bytes.
    escaped = SDP + "a=x-pad:" + "\x01" * (MAX_SDP // 3) + "\r\n"
    assert len(escaped.encode()) <= MAX_SDP
    data = encode(PollOffer("a" * 22, escaped))
    assert len(data) > MAX_BODY
    assert decode_poll_response(data) == PollOffer("a" * 22, escaped)


def test_error_status_table() -> None:
    assert ERROR_STATUS == {
        "bad_request": 400,
        "too_large": 413,
        "unsupported_version": 422,
        "unknown_offer": 404,
        "unknown_egress": 400,
        "no_volunteer": 503,
        "no_compatible_volunteer": 503,
        "rate_limited": 429,
        "bad_seal": 400,
        "no_turn": 503,
    }
    assert BrokerError("no_volunteer", "").status == 503
    assert BrokerError("from_the_future", "").status == 500


def test_message_error_to_broker_error() -> None:
    with pytest.raises(MessageError) as info:
        decode_client_offer(body(version=7, sdp=SDP))
    error = info.value.to_broker_error()
    assert error == BrokerError("unsupported_version", info.value.message, (1,))
    assert json.loads(encode(error))["supported"] == [1]
    bad = MessageError("bad_request", "field 'sdp' is missing").to_broker_error()
    assert bad.supported == ()
    assert "supported" not in json.loads(encode(bad))
    assert repr(MessageError("bad_request", "x")) == "MessageError('bad_request', 'x')"


def test_absent_nat_and_relay_mean_unknown_and_no_relay() -> None:
    """What a browser volunteer or an older client sends: no nat, no relay."""
    poll = decode_volunteer_poll(body(**poll_fields(kind="browser")))
    assert (poll.nat, poll.relay) == ("unknown", False)
    offer = decode_client_offer(body(sdp=SDP))
    assert (offer.nat, offer.relay) == ("unknown", False)
    explicit = decode_client_offer(body(sdp=SDP, nat="unknown", relay=False))
    assert explicit == offer


def test_the_egress_pin_and_the_relay_url_round_trip() -> None:
    from unwall.egress.identity import generate_identity

    pin = generate_identity().pin
    assert decode_client_offer(encode(ClientOffer(SDP, egress=pin))).egress == pin
    assert decode_client_offer(encode(ClientOffer(SDP))).egress is None
    with pytest.raises(MessageError, match="egress"):
        decode_client_offer(body(version=1, sdp=SDP, egress="sha256:nope"))
    offer = PollOffer("o1", SDP, relay_url="wss://e2.example/v1/relay")
    assert decode_poll_response(encode(offer)) == offer
    assert decode_poll_response(encode(PollOffer("o1", SDP))).relay_url is None
    bad = {"version": 1, "status": "offer", "offer_id": "o1", "sdp": SDP}
    for url in ("https://e2.example/", "", 5):
        with pytest.raises(MessageError, match="relay_url"):
            decode_poll_response(json.dumps({**bad, "relay_url": url}).encode())


@pytest.mark.parametrize(
    ("fields", "decode", "words"),
    [
        ({"commitment": "AAAA"}, "decode_client_offer", "commitment"),
        ({"commitment": 7}, "decode_client_offer", "commitment"),
        ({"status": "answer", "ticket": "a b"}, "decode_client_answer", "ticket"),
        (
            {"status": "offer", "offer_id": "x", "ticket": "T" * 256},
            "decode_poll_response",
            "ticket",
        ),
    ],
)
def test_a_bad_ticket_or_commitment_is_a_bad_request(
    fields: dict[str, object], decode: str, words: str
) -> None:
    """Issue 22: the fields of tickets and vouchers (protocol.md §3.1) are checked like any
    other field."""
    import json

    import unwall.wire.broker as messages

    body = json.dumps({"version": 1, "sdp": SDP, **fields}).encode()
    with pytest.raises(MessageError, match=words) as caught:
        getattr(messages, decode)(body)
    assert caught.value.code == "bad_request"


def test_turn_request_and_grant_round_trip() -> None:
    from unwall.wire.broker import (
        TurnGrant,
        TurnRequest,
        TurnServer,
        decode_turn_grant,
        decode_turn_request,
    )

    assert decode_turn_request(encode(TurnRequest())) == TurnRequest()
    grant = TurnGrant((TurnServer(("turn:t.example:3478",), "1700000000:unwall", "c2VjcmV0"),))
    assert decode_turn_grant(encode(grant)) == grant
    with pytest.raises(MessageError, match="at least one TURN server"):
        decode_turn_grant(b'{"version":1,"status":"turn"}')
    with pytest.raises(MessageError, match="'status' must be 'turn'"):
        decode_turn_grant(b'{"version":1,"status":"answer"}')
