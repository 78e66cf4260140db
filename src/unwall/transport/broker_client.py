"""The HTTP side of talking to the broker, shared by the client and the volunteer."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import TypeVar

import aiohttp
from yarl import URL

from unwall.wire import broker as messages
from unwall.wire.nat import NatKind

log = logging.getLogger("unwall.broker_client")
T = TypeVar("T")


class BrokerUnavailable(Exception):
    """The broker could not be reached or answered with something unexpected."""


class NoVolunteer(Exception):
    """The broker had no volunteer for us within its answer timeout."""


class NoCompatibleVolunteer(NoVolunteer):
    """Volunteers were free, but none our NAT can connect to (and we have no TURN relay)."""


class OfferGone(Exception):
    """The client behind an offer gave up before our answer arrived."""


class BrokerClient:
    """POSTs to the broker, directly or domain-fronted.

    With `front` (an https:// URL of a CDN that forwards by Host header), connections go to
    the front (DNS, TCP and TLS SNI all name the front) and only the HTTP Host header,
    inside TLS, names the broker; a censor that blocks the broker's name and address sees
    a connection to the CDN.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        front: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        self._target = self.base_url
        self._ssl: ssl.SSLContext | bool = True
        if front is not None:
            broker = URL(self.base_url)
            self._target = front.rstrip("/") + broker.path.rstrip("/")
            self._headers["Host"] = broker.host or ""
        if ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=ca_file)

    async def _post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        url = self._target + path
        try:
            async with self._http.post(
                url,
                data=body,
                headers=self._headers,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                data = await response.content.read(messages.MAX_RESPONSE_BODY + 1)
                return response.status, data
        except TimeoutError as exc:
            raise BrokerUnavailable(f"broker at {self.base_url} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BrokerUnavailable(f"cannot reach the broker at {self.base_url}: {exc}") from exc

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
        status, body = await self._post("/v1/client/offer", messages.encode(offer), timeout)
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
