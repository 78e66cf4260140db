"""The HTTP side of talking to the broker, shared by the client and the volunteer."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from yarl import URL

from unwall.transport.brokerhttp import BrokerHttp, HttpFailed
from unwall.wire import broker as messages
from unwall.wire import sealed
from unwall.wire.nat import NatKind
from unwall.wire.sealed import CLIENT_OFFER_PATH, CLIENT_TURN_PATH, SEALED_PATH

log = logging.getLogger("unwall.broker_client")
T = TypeVar("T")
#: Seconds to open a connection to the broker or a front before trying the next route.
CONNECT_TIMEOUT = 10.0


#: the most of an answer read: a sealed one is padded to a whole bucket
MAX_ANSWER = sealed.max_sealed_size(messages.MAX_RESPONSE_BODY)


class BrokerUnavailable(Exception):
    """The broker could not be reached or answered with something unexpected."""


class NoVolunteer(Exception):
    """The broker had no volunteer for us within its answer timeout."""


class NoCompatibleVolunteer(NoVolunteer):
    """Volunteers were free, but none our NAT can connect to (and we have no TURN relay)."""


class NoTurn(Exception):
    """The broker has no TURN server for clients, or we cannot ask it sealed."""


class OfferGone(Exception):
    """The client behind an offer gave up before our answer arrived."""


@dataclass(frozen=True)
class Route:
    """One way to the broker: straight to it, or through a front."""

    name: str  # how the user knows it: "the broker at URL" or "front URL"
    target: str  # the URL the request paths are appended to
    host: str | None = None  # the Host header, when a front forwards by it


class RouteFailed(Exception):
    """This route did not reach the broker (the next one may)."""


#: a sealed request in, the broker's sealed response out (timeout in seconds)
InnerRoute = Callable[[bytes, float], Awaitable[bytes]]


class BrokerClient:
    """POSTs to the broker, directly or domain-fronted.

    With `fronts` (https:// URLs of CDNs that forward by Host header), connections go to a
    front (DNS, TCP and TLS SNI all name the front) and only the HTTP Host header, inside
    TLS, names the broker; a censor that blocks the broker's name and address sees a
    connection to the CDN. Several fronts are tried in a random order, and the one that
    last worked first: a front that cannot be reached, or that answers with something not
    the broker's (an error page), is passed over for the next. When none reaches the
    broker, the error says, in one line, how each failed.

    With `broker_key` (the bridge line's ``brokerkey=``), a client's offers travel sealed
    to that key (unwall.wire.sealed): a front, or anyone else between, sees same-sized
    opaque bodies, and an answer not sealed by the broker is refused like an error page.
    """

    def __init__(
        self,
        http: BrokerHttp,
        base_url: str,
        fronts: Sequence[str] = (),
        broker_key: str | None = None,
    ) -> None:
        self._http = http
        self._broker_key = None if broker_key is None else sealed.parse_public_key(broker_key)
        #: the way through our own tunnel to the egress, which passes sealed requests on
        #: to the broker (the client sets it): tried first, so that a connected client
        #: sends nothing to the broker directly; RouteFailed when the tunnel is down
        self.inner: InnerRoute | None = None
        self._inner_working = False
        self.base_url = base_url.rstrip("/")
        broker = URL(self.base_url)
        self.routes = [
            Route(
                f"front {front}",
                front.rstrip("/") + broker.path.rstrip("/"),
                broker.host_port_subcomponent,  # the port too, unless the scheme's own
            )
            for front in fronts
        ] or [Route(f"the broker at {self.base_url}", self.base_url)]
        random.shuffle(self.routes)

    async def _post(
        self, path: str, body: bytes, timeout: float, seal: bool = False
    ) -> tuple[int, bytes]:
        """POST `body` to `path` by the first route that works (sealed if `seal` and we
        have the broker's key); the broker's status and JSON body."""
        failed: list[str] = []
        if seal and self._broker_key is not None and self.inner is not None:
            try:
                answer = await self._post_inner(path, body, timeout)
            except RouteFailed as exc:
                if self._inner_working:
                    log.info("broker requests go directly again (%s)", exc)
                self._inner_working = False
            else:
                if not self._inner_working:
                    log.info("broker requests travel inside the tunnel, through the egress")
                self._inner_working = True
                return answer
        for route in list(self.routes):
            try:
                if seal and self._broker_key is not None:
                    answer = await self._post_sealed(route, path, body, timeout)
                else:
                    answer = await self._post_via(route, path, body, timeout)
            except RouteFailed as exc:
                failed.append(f"{route.name}: {exc}")
                continue
            if failed:
                # the one that worked goes first next time
                self.routes.remove(route)
                self.routes.insert(0, route)
                log.info("reached the broker through %s (%s)", route.name, "; ".join(failed))
            return answer
        if len(failed) == 1:
            raise BrokerUnavailable(f"cannot reach {failed[0]}")
        raise BrokerUnavailable(
            f"cannot reach the broker by any of {len(failed)} routes: " + "; ".join(failed)
        )

    async def _post_inner(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        assert self._broker_key is not None and self.inner is not None
        data, pending = sealed.seal_request(self._broker_key, path, body, time.time())
        answer = await self.inner(data, timeout)
        try:
            return sealed.open_response(pending, answer)
        except sealed.SealError as exc:
            raise RouteFailed(f"the egress passed back {exc}") from None

    async def _post_sealed(
        self, route: Route, path: str, body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        assert self._broker_key is not None
        data, pending = sealed.seal_request(self._broker_key, path, body, time.time())
        status, kind, answer = await self._send(
            route, SEALED_PATH, data, timeout, sealed.CONTENT_TYPE
        )
        if kind == sealed.CONTENT_TYPE:
            try:
                return sealed.open_response(pending, answer)
            except sealed.SealError as exc:
                raise RouteFailed(f"{exc}: not the broker of the bridge line") from None
        if kind == "application/json":
            try:
                error = messages.decode_error(answer)
            except messages.MessageError:
                pass
            else:
                raise RouteFailed(f"the broker refused our sealed request: {error.message}")
        raise RouteFailed(f"answered HTTP {status} ({kind or 'no type'}), not the broker")

    async def _post_via(
        self, route: Route, path: str, body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        status, kind, data = await self._send(route, path, body, timeout, "application/json")
        if status >= 400 and kind != "application/json":
            # an error page: the front's (or a box's), not the broker's
            raise RouteFailed(f"answered HTTP {status} ({kind or 'no type'}), not the broker")
        return status, data

    async def _send(
        self, route: Route, path: str, body: bytes, timeout: float, content_type: str
    ) -> tuple[int, str, bytes]:
        """One POST by one route: status, content type and body (RouteFailed if none)."""
        headers = {"Content-Type": content_type}
        if route.host is not None:
            headers["Host"] = route.host
        try:
            answer = await self._http.post(
                route.target + path, body, headers, timeout, CONNECT_TIMEOUT, MAX_ANSWER
            )
        except HttpFailed as exc:
            raise RouteFailed(str(exc)) from exc
        return answer.status, answer.content_type, answer.body

    def _error(self, status: int, body: bytes) -> BrokerUnavailable:
        try:
            error = messages.decode_error(body)
            return BrokerUnavailable(f"broker said {error.code}: {error.message}")
        except messages.MessageError:
            return BrokerUnavailable(f"broker answered HTTP {status} with an unexpected body")

    async def offer(
        self,
        sdp: str,
        nat: NatKind = "unknown",
        relay: bool = False,
        timeout: float = 30.0,
        egress: str | None = None,
        commitment: bytes | None = None,
    ) -> messages.ClientAnswer:
        """Post a client's offer (for the egress of pin `egress`, with the `commitment` to
        its secret for this offer); return the volunteer's answer and the broker's ticket."""
        offer = messages.ClientOffer(sdp, nat, relay, egress, commitment)
        status, body = await self._post(
            CLIENT_OFFER_PATH, messages.encode(offer), timeout, seal=True
        )
        if status == 200:
            return self._decode(messages.decode_client_answer, body)
        if status == 503:
            try:
                code = messages.decode_error(body).code
            except messages.MessageError:
                code = messages.NO_VOLUNTEER
            if code == messages.NO_COMPATIBLE_VOLUNTEER:
                raise NoCompatibleVolunteer(
                    f"no volunteer free at {self.base_url} can accept a {nat} NAT"
                )
            raise NoVolunteer(f"no volunteer available at {self.base_url}")
        raise self._error(status, body)

    async def turn(self, timeout: float = 30.0) -> tuple[messages.TurnServer, ...]:
        """TURN servers with credentials for this client, asked for sealed (never in the
        clear: credentials to a relay are worth stealing)."""
        if self._broker_key is None:
            raise NoTurn(
                "TURN credentials come from the broker only sealed, and the bridge line has "
                "no brokerkey"
            )
        request = messages.encode(messages.TurnRequest())
        status, body = await self._post(CLIENT_TURN_PATH, request, timeout, seal=True)
        if status == 200:
            return self._decode(messages.decode_turn_grant, body).turn
        try:
            error = messages.decode_error(body)
        except messages.MessageError:
            raise self._error(status, body) from None
        if error.code == messages.NO_TURN:
            raise NoTurn(f"the broker says: {error.message}")
        raise self._error(status, body)

    async def poll(
        self,
        volunteer_id: str,
        capacity: int,
        clients: int,
        kind: messages.VolunteerKind,
        nat: NatKind = "unknown",
        relay: bool = False,
    ) -> messages.PollOffer | messages.PollIdle:
        poll = messages.VolunteerPoll(volunteer_id, capacity, clients, kind, nat, relay)
        status, body = await self._post("/v1/volunteer/poll", messages.encode(poll), timeout=120.0)
        if status == 200:
            return self._decode(messages.decode_poll_response, body)
        raise self._error(status, body)

    async def answer(self, volunteer_id: str, offer_id: str, sdp: str) -> None:
        status, body = await self._post(
            "/v1/volunteer/answer",
            messages.encode(messages.VolunteerAnswer(volunteer_id, offer_id, sdp)),
            timeout=30.0,
        )
        if status == 200:
            return
        if status == 404:
            raise OfferGone("the client gave up before our answer arrived")
        raise self._error(status, body)

    def _decode(self, decode: Callable[[bytes], T], body: bytes) -> T:
        try:
            return decode(body)
        except messages.MessageError as exc:
            raise BrokerUnavailable(f"broker sent a malformed message: {exc.message}") from exc
