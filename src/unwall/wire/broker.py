"""Broker messages, version 1: the JSON bodies of docs/protocol.md section 1.

One vocabulary shared by the broker, the client and the volunteer. Each message is a frozen
dataclass; ``encode`` turns any of them into a request or response body and one ``decode_*``
function per direction turns a body back into a message, validating every field and limit.
Invalid input raises :class:`MessageError`, whose ``code`` is the protocol's error code.

Requests (client or volunteer -> broker) are limited to :data:`MAX_BODY` bytes. Responses
(broker -> client or volunteer) may be a little larger, because the broker wraps an SDP it
received in a few more fields; their decoders accept up to :data:`MAX_RESPONSE_BODY`, and a
caller reading a response should stop reading there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from unwall.wire import ticket
from unwall.wire.nat import NAT_KINDS, NatKind
from unwall.wire.pin import normalize_pin

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (PROTOCOL_VERSION,)

MAX_BODY: Final = 65536
MAX_RESPONSE_BODY: Final = 2 * MAX_BODY
MAX_SDP: Final = 32768
MIN_CAPACITY: Final = 1
MAX_CAPACITY: Final = 1000
MAX_OFFER_ID: Final = 128
MAX_TURN_SERVERS: Final = 4
MAX_TURN_URLS: Final = 8
MAX_TURN_STRING: Final = 512

VolunteerKind = Literal["headless", "browser"]
VOLUNTEER_KINDS: Final[tuple[VolunteerKind, ...]] = ("headless", "browser")

BAD_REQUEST: Final = "bad_request"
TOO_LARGE: Final = "too_large"
UNSUPPORTED_VERSION: Final = "unsupported_version"
UNKNOWN_OFFER: Final = "unknown_offer"
NO_VOLUNTEER: Final = "no_volunteer"
NO_COMPATIBLE_VOLUNTEER: Final = "no_compatible_volunteer"
UNKNOWN_EGRESS: Final = "unknown_egress"
RATE_LIMITED: Final = "rate_limited"
#: a sealed request (protocol.md §1.6) that does not open, or is stale or replayed
BAD_SEAL: Final = "bad_seal"
#: a client asked for TURN credentials from a broker that has no TURN server for clients
NO_TURN: Final = "no_turn"

ERROR_STATUS: Final[dict[str, int]] = {
    BAD_REQUEST: 400,
    UNKNOWN_EGRESS: 400,
    UNKNOWN_OFFER: 404,
    TOO_LARGE: 413,
    UNSUPPORTED_VERSION: 422,
    NO_VOLUNTEER: 503,
    NO_COMPATIBLE_VOLUNTEER: 503,
    RATE_LIMITED: 429,
    BAD_SEAL: 400,
    NO_TURN: 503,
}

_VOLUNTEER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_OFFER_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_OFFER_ID}}}")
_TURN_URL = re.compile(r"turns?:[^\s]+")
_TICKET = re.compile(rf"[A-Za-z0-9_-]{{1,{ticket.MAX_TICKET_TEXT}}}")


class MessageError(ValueError):
    """A body that is not a valid message; ``code`` is the protocol error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"MessageError({self.code!r}, {self.message!r})"

    def to_broker_error(self) -> BrokerError:
        """The error response that reports this problem to the sender."""
        supported = SUPPORTED_VERSIONS if self.code == UNSUPPORTED_VERSION else ()
        return BrokerError(self.code, self.message, supported)


# -- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnServer:
    """A TURN server with credentials, shaped like WebRTC's RTCIceServer dictionary."""

    urls: tuple[str, ...]
    username: str
    credential: str


@dataclass(frozen=True, slots=True)
class VolunteerPoll:
    """Volunteer -> broker, POST /v1/volunteer/poll: asks for work and reports its load.

    ``nat`` is the volunteer's NAT kind (`unknown` when absent: browsers do not measure it
    yet); ``relay`` says it has a TURN server it will use for every client.
    """

    volunteer_id: str
    capacity: int
    clients: int
    kind: VolunteerKind
    nat: NatKind = "unknown"
    relay: bool = False


@dataclass(frozen=True)
class PollOffer:
    """Broker -> volunteer: a client's offer to answer; ``turn``: credentials to use;
    ``relay_url``: the egress to relay this client to (None: the volunteer's own)."""

    offer_id: str
    sdp: str
    turn: tuple[TurnServer, ...] = ()
    relay_url: str | None = None
    #: the broker's voucher for this offer, for the egress (protocol.md §3.1); the
    #: volunteer passes it on in the relay URL's query, `ticket=`
    ticket: str | None = None


@dataclass(frozen=True)
class PollIdle:
    """Broker -> volunteer: no work this time; poll again. ``turn``: credentials to use."""

    turn: tuple[TurnServer, ...] = ()


@dataclass(frozen=True)
class VolunteerAnswer:
    """Volunteer -> broker, POST /v1/volunteer/answer."""

    volunteer_id: str
    offer_id: str
    sdp: str


@dataclass(frozen=True)
class AnswerAccepted:
    """Broker -> volunteer: the answer was passed on to the client."""


@dataclass(frozen=True)
class ClientOffer:
    """Client -> broker, POST /v1/client/offer.

    ``nat`` is the client's NAT kind (`unknown` when absent); ``relay`` says the client has
    a TURN server, so any volunteer will do; ``egress`` is the pin of the egress its bridge
    line names (the broker finds that egress's relay URL in its operator's list).
    """

    sdp: str
    nat: NatKind = "unknown"
    relay: bool = False
    egress: str | None = None
    #: SHA-256 of a secret only this client knows, for the broker's ticket (§3.1)
    commitment: bytes | None = None


@dataclass(frozen=True)
class ClientAnswer:
    """Broker -> client: a volunteer's answer, and the ticket the broker minted for the
    offer (the client shows it to the egress with its secret)."""

    sdp: str
    ticket: str | None = None


@dataclass(frozen=True)
class TurnRequest:
    """Client -> broker, sealed only (POST /v1/sealed, path /v1/client/turn): TURN
    credentials for the `turn:` URLs of its bridge line."""


@dataclass(frozen=True)
class TurnGrant:
    """Broker -> client: TURN servers with credentials (valid for the broker's ttl)."""

    turn: tuple[TurnServer, ...]


@dataclass(frozen=True)
class BrokerError:
    """Broker -> anyone: an error response; ``supported`` is set for unsupported_version."""

    code: str
    message: str
    supported: tuple[int, ...] = ()

    @property
    def status(self) -> int:
        """The HTTP status this error is sent with (500 for a code this version lacks)."""
        return ERROR_STATUS.get(self.code, 500)


Message = (
    VolunteerPoll
    | PollOffer
    | PollIdle
    | VolunteerAnswer
    | AnswerAccepted
    | ClientOffer
    | ClientAnswer
    | TurnRequest
    | TurnGrant
    | BrokerError
)


# -- encoding -------------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The JSON body (UTF-8) of a message, with ``"version": 1``."""
    obj: dict[str, Any] = {"version": PROTOCOL_VERSION}
    match msg:
        case VolunteerPoll():
            obj.update(
                volunteer_id=msg.volunteer_id,
                capacity=msg.capacity,
                clients=msg.clients,
                kind=msg.kind,
            )
            _put_nat(obj, msg.nat, msg.relay)
        case PollOffer():
            obj.update(status="offer", offer_id=msg.offer_id, sdp=msg.sdp)
            _put_turn(obj, msg.turn)
            if msg.relay_url is not None:
                obj["relay_url"] = msg.relay_url
            if msg.ticket is not None:
                obj["ticket"] = msg.ticket
        case PollIdle():
            obj.update(status="idle")
            _put_turn(obj, msg.turn)
        case VolunteerAnswer():
            obj.update(volunteer_id=msg.volunteer_id, offer_id=msg.offer_id, sdp=msg.sdp)
        case AnswerAccepted():
            obj.update(status="ok")
        case ClientOffer():
            obj.update(sdp=msg.sdp)
            _put_nat(obj, msg.nat, msg.relay)
            if msg.egress is not None:
                obj["egress"] = msg.egress
            if msg.commitment is not None:
                obj["commitment"] = ticket.encode_commitment(msg.commitment)
        case ClientAnswer():
            obj.update(status="answer", sdp=msg.sdp)
            if msg.ticket is not None:
                obj["ticket"] = msg.ticket
        case TurnRequest():
            pass
        case TurnGrant():
            obj.update(status="turn")
            _put_turn(obj, msg.turn)
        case BrokerError():
            obj.update(error=msg.code, message=msg.message)
            if msg.supported:
                obj.update(supported=list(msg.supported))
        case _:
            raise TypeError(f"not a broker message: {msg!r}")
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _put_nat(obj: dict[str, Any], nat: NatKind, relay: bool) -> None:
    # Optional fields are sent only when they say something: absent means the default.
    if nat != "unknown":
        obj["nat"] = nat
    if relay:
        obj["relay"] = True


def _put_turn(obj: dict[str, Any], turn: tuple[TurnServer, ...]) -> None:
    if turn:
        obj["turn"] = [turn_server_json(server) for server in turn]


def turn_server_json(server: TurnServer) -> dict[str, Any]:
    """A TURN server as JSON, the shape of WebRTC's RTCIceServer (for browsers as is)."""
    return {"urls": list(server.urls), "username": server.username, "credential": server.credential}


# -- decoding: requests ---------------------------------------------------------------------


def decode_volunteer_poll(body: bytes) -> VolunteerPoll:
    """Decode the body of POST /v1/volunteer/poll."""
    obj = _load(body, MAX_BODY)
    return VolunteerPoll(
        volunteer_id=_volunteer_id(obj),
        capacity=_int(obj, "capacity", MIN_CAPACITY, MAX_CAPACITY),
        clients=_int(obj, "clients", 0, None),
        kind=_kind(obj),
        nat=_nat(obj),
        relay=_flag(obj, "relay"),
    )


def decode_volunteer_answer(body: bytes) -> VolunteerAnswer:
    """Decode the body of POST /v1/volunteer/answer."""
    obj = _load(body, MAX_BODY)
    return VolunteerAnswer(volunteer_id=_volunteer_id(obj), offer_id=_offer_id(obj), sdp=_sdp(obj))


def decode_client_offer(body: bytes) -> ClientOffer:
    """Decode the body of POST /v1/client/offer."""
    obj = _load(body, MAX_BODY)
    egress = None
    if "egress" in obj:
        try:
            egress = normalize_pin(_str(obj, "egress"))
        except ValueError as exc:
            raise _bad(f"field 'egress': {exc}") from None
    commitment = None
    if "commitment" in obj:
        try:
            commitment = ticket.decode_commitment(_str(obj, "commitment"))
        except ValueError as exc:
            raise _bad(f"field 'commitment': {exc}") from None
    return ClientOffer(
        sdp=_sdp(obj),
        nat=_nat(obj),
        relay=_flag(obj, "relay"),
        egress=egress,
        commitment=commitment,
    )


# -- decoding: responses --------------------------------------------------------------------


def decode_poll_response(body: bytes) -> PollOffer | PollIdle:
    """Decode a 200 response to POST /v1/volunteer/poll."""
    obj = _load(body, MAX_RESPONSE_BODY)
    status = _status(obj, ("offer", "idle"))
    if status == "idle":
        return PollIdle(turn=_turn(obj))
    relay_url = None
    if "relay_url" in obj:
        relay_url = _str(obj, "relay_url")
        if not relay_url.startswith(("ws://", "wss://")) or len(relay_url) > 2048:
            raise _bad("field 'relay_url' must be a ws:// or wss:// URL")
    return PollOffer(
        offer_id=_offer_id(obj),
        sdp=_sdp(obj),
        turn=_turn(obj),
        relay_url=relay_url,
        ticket=_ticket(obj),
    )


def decode_turn_request(body: bytes) -> TurnRequest:
    """Decode a client's request for TURN credentials (it has no fields but the version)."""
    _load(body, MAX_BODY)
    return TurnRequest()


def decode_turn_grant(body: bytes) -> TurnGrant:
    """Decode a 200 response to a TurnRequest: at least one TURN server."""
    obj = _load(body, MAX_RESPONSE_BODY)
    _status(obj, ("turn",))
    turn = _turn(obj)
    if not turn:
        raise _bad("field 'turn' must name at least one TURN server")
    return TurnGrant(turn)


def decode_answer_accepted(body: bytes) -> AnswerAccepted:
    """Decode a 200 response to POST /v1/volunteer/answer."""
    _status(_load(body, MAX_RESPONSE_BODY), ("ok",))
    return AnswerAccepted()


def decode_client_answer(body: bytes) -> ClientAnswer:
    """Decode a 200 response to POST /v1/client/offer."""
    obj = _load(body, MAX_RESPONSE_BODY)
    _status(obj, ("answer",))
    return ClientAnswer(sdp=_sdp(obj), ticket=_ticket(obj))


def _ticket(obj: dict[str, Any]) -> str | None:
    if "ticket" not in obj:
        return None
    value = _str(obj, "ticket")
    if not _TICKET.fullmatch(value):
        raise _bad(f"field 'ticket' must be 1 to {ticket.MAX_TICKET_TEXT} base64url characters")
    return value


def decode_error(body: bytes) -> BrokerError:
    """Decode an error response (any non-200 status)."""
    obj = _load(body, MAX_RESPONSE_BODY)
    code = _str(obj, "error")
    if not code:
        raise _bad("field 'error' must not be empty")
    message = _str(obj, "message")
    supported: tuple[int, ...] = ()
    if "supported" in obj:
        raw = obj["supported"]
        if not isinstance(raw, list) or not all(_is_int(v) for v in raw):
            raise _bad("field 'supported' must be a list of integers")
        supported = tuple(raw)
    return BrokerError(code, message, supported)


# -- field checks ---------------------------------------------------------------------------


def _bad(message: str) -> MessageError:
    return MessageError(BAD_REQUEST, message)


def _load(body: bytes, limit: int) -> dict[str, Any]:
    """Parse a body into a JSON object and check its version, before any other field."""
    if len(body) > limit:
        raise MessageError(TOO_LARGE, f"the body is {len(body)} bytes; the limit is {limit}")
    try:
        obj = json.loads(bytes(body).decode("utf-8"), parse_constant=_reject_constant)
    except MessageError:
        raise
    except UnicodeDecodeError as exc:
        raise _bad(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _bad(f"the body is not JSON ({exc.msg} at {where})") from None
    except (ValueError, RecursionError):
        # Numbers longer than Python's integer digit limit, or absurd nesting.
        raise _bad("the body is not JSON this broker can read") from None
    if not isinstance(obj, dict):
        raise _bad(f"the body must be a JSON object, not {_json_type(obj)}")
    if "version" not in obj:
        raise _bad("field 'version' is missing; this side speaks version 1")
    version = obj["version"]
    if not _is_int(version):
        raise _bad(f"field 'version' must be an integer, not {_json_type(version)}")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise MessageError(
            UNSUPPORTED_VERSION, f"version {version} is not supported; use version {supported}"
        )
    return obj


def _reject_constant(name: str) -> object:
    raise _bad(f"the body is not JSON ({name} is not a JSON value)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field(obj: dict[str, Any], name: str) -> object:
    if name not in obj:
        raise _bad(f"field '{name}' is missing")
    value: object = obj[name]
    return value


def _str(obj: dict[str, Any], name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str):
        raise _bad(f"field '{name}' must be a string, not {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"field '{name}' holds an unpaired surrogate") from None
    return value


def _int(obj: dict[str, Any], name: str, low: int, high: int | None) -> int:
    value = _field(obj, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"field '{name}' must be an integer, not {_json_type(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise _bad(f"field '{name}' must be {bounds}, not {value}")
    return value


def _volunteer_id(obj: dict[str, Any]) -> str:
    value = _str(obj, "volunteer_id")
    if not _VOLUNTEER_ID.fullmatch(value):
        raise _bad("field 'volunteer_id' must be 8 to 64 characters of A-Z a-z 0-9 _ -")
    return value


def _offer_id(obj: dict[str, Any]) -> str:
    value = _str(obj, "offer_id")
    if not _OFFER_ID.fullmatch(value):
        raise _bad(f"field 'offer_id' must be 1 to {MAX_OFFER_ID} characters of A-Z a-z 0-9 _ -")
    return value


def _sdp(obj: dict[str, Any]) -> str:
    value = _str(obj, "sdp")
    if not value:
        raise _bad("field 'sdp' must not be empty")
    size = len(value.encode("utf-8"))
    if size > MAX_SDP:
        raise _bad(f"field 'sdp' is {size} bytes; the limit is {MAX_SDP}")
    # Not a full SDP parser (aiortc parses it at the peers); enough to turn away what can
    # never become an unwall data channel before it ties up a volunteer.
    if not value.startswith("v=0"):
        raise _bad("field 'sdp' is not a session description (it must start with 'v=0')")
    if "m=application " not in value or "webrtc-datachannel" not in value:
        raise _bad("field 'sdp' has no data channel section (m=application ... webrtc-datachannel)")
    return value


def _kind(obj: dict[str, Any]) -> VolunteerKind:
    value = _str(obj, "kind")
    for kind in VOLUNTEER_KINDS:
        if value == kind:
            return kind
    raise _bad(f"field 'kind' must be 'headless' or 'browser', not {value[:32]!r}")


def _nat(obj: dict[str, Any]) -> NatKind:
    if "nat" not in obj:
        return "unknown"
    value = _str(obj, "nat")
    for kind in NAT_KINDS:
        if value == kind:
            return kind
    raise _bad(f"field 'nat' must be one of {', '.join(NAT_KINDS)}, not {value[:32]!r}")


def _flag(obj: dict[str, Any], name: str) -> bool:
    if name not in obj:
        return False
    value = obj[name]
    if not isinstance(value, bool):
        raise _bad(f"field '{name}' must be true or false, not {_json_type(value)}")
    return value


def _turn(obj: dict[str, Any]) -> tuple[TurnServer, ...]:
    if "turn" not in obj:
        return ()
    raw = obj["turn"]
    if not isinstance(raw, list) or len(raw) > MAX_TURN_SERVERS:
        raise _bad(f"field 'turn' must be a list of at most {MAX_TURN_SERVERS} TURN servers")
    return tuple(_turn_server(entry) for entry in raw)


def _turn_server(entry: object) -> TurnServer:
    if not isinstance(entry, dict):
        raise _bad(f"each entry of 'turn' must be an object, not {_json_type(entry)}")
    urls = entry.get("urls")
    if (
        not isinstance(urls, list)
        or not 1 <= len(urls) <= MAX_TURN_URLS
        or not all(isinstance(u, str) and _TURN_URL.fullmatch(u[:MAX_TURN_STRING]) for u in urls)
    ):
        raise _bad(f"'turn' urls must be a list of 1 to {MAX_TURN_URLS} turn: or turns: URLs")
    username, credential = _str(entry, "username"), _str(entry, "credential")
    for value in (*urls, username, credential):
        if len(value) > MAX_TURN_STRING:
            raise _bad(f"a 'turn' string is longer than {MAX_TURN_STRING} characters")
    return TurnServer(tuple(urls), username, credential)


def _status(obj: dict[str, Any], allowed: tuple[str, ...]) -> str:
    value = _str(obj, "status")
    if value not in allowed:
        expected = " or ".join(repr(s) for s in allowed)
        raise _bad(f"field 'status' must be {expected}, not {value[:32]!r}")
    return value
