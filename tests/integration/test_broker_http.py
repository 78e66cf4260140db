"""The broker over real HTTP on 127.0.0.1 (docs/protocol.md section 1)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from unwall.broker import matchmaker, server
from unwall.broker.server import BROKER_KEY, BrokerConfig, create_app, run_broker
from unwall.broker.turn import TurnIssuer, turn_password
from unwall.wire import report
from unwall.wire.broker import (
    MAX_BODY,
    AnswerAccepted,
    ClientAnswer,
    ClientOffer,
    PollIdle,
    PollOffer,
    VolunteerAnswer,
    VolunteerPoll,
    decode_answer_accepted,
    decode_client_answer,
    decode_error,
    decode_poll_response,
    encode,
)
from unwall.wire.nat import NatKind

OFFER_SDP = (
    "v=0\r\n"
    "o=- 1 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=setup:actpass\r\n"
    "a=sctp-port:5000\r\n"
    "a=max-message-size:65536\r\n"
)
ANSWER_SDP = (
    "v=0\r\n"
    "o=- 3 4 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=setup:active\r\n"
    "a=sctp-port:5000\r\n"
    "a=max-message-size:65536\r\n"
)
JSON = {"Content-Type": "application/json"}


@dataclass
class Broker:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        async with self.http.post(self.url + path, data=body, headers=JSON | (headers or {})) as r:
            return r.status, await r.read()

    async def poll(
        self, name: str, capacity: int = 8, clients: int = 0, nat: NatKind = "unknown"
    ) -> PollOffer | PollIdle:
        msg = VolunteerPoll(f"volunteer-{name}", capacity, clients, "headless", nat)
        status, body = await self.post("/v1/volunteer/poll", encode(msg))
        assert status == 200, body
        return decode_poll_response(body)

    async def answer(self, name: str, offer_id: str) -> tuple[int, bytes]:
        msg = VolunteerAnswer(f"volunteer-{name}", offer_id, ANSWER_SDP)
        return await self.post("/v1/volunteer/answer", encode(msg))

    async def offer(
        self, nat: NatKind = "unknown", relay: bool = False, forwarded_for: str | None = None
    ) -> tuple[int, bytes]:
        """A client's offer; `forwarded_for` names the client through a trusted front."""
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
        body = encode(ClientOffer(OFFER_SDP, nat, relay))
        return await self.post("/v1/client/offer", body, headers)

    async def report_carried(self, secret: str, *offer_ids: str) -> int:
        """An egress's report that these offers' relays carried sessions: credited."""
        body = json.dumps({"offers": list(offer_ids)}).encode()
        auth = {"Authorization": report.sign(report.report_key(secret), body, time.time())}
        status, reply = await self.post("/v1/egress/carried", body, auth)
        assert status == 200, reply
        return int(json.loads(reply)["credited"])

    async def metrics(self) -> set[str]:
        async with self.http.get(self.url + "/metrics") as resp:
            assert resp.status == 200
            return set((await resp.text()).splitlines())

    async def health(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/v1/health") as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result

    async def counts(self) -> dict[str, int]:
        """The exact counts behind /v1/health (which rounds them), from the broker itself."""
        return await self.app[BROKER_KEY].counts()

    async def until(self, key: str, value: int) -> None:
        """Wait (briefly) until the broker's exact count ``key`` is ``value``."""
        for _ in range(100):
            if (await self.counts())[key] == value:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{key} never became {value}: {await self.counts()}")

    def open_polls(self) -> int:
        return self.app[BROKER_KEY].matchmaker.open_poll_count


async def start(
    config: BrokerConfig, *, handler_cancellation: bool = False
) -> tuple[web.AppRunner, str]:
    app = create_app(config)
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@asynccontextmanager
async def serving(config: BrokerConfig, *, handler_cancellation: bool) -> AsyncIterator[Broker]:
    runner, url = await start(config, handler_cancellation=handler_cancellation)
    try:
        async with aiohttp.ClientSession() as http:
            yield Broker(url, runner.app, http)
    finally:
        started = time.monotonic()
        cleanup = asyncio.ensure_future(runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=10.0)
        if not done:
            # Say what is stuck rather than hang until the suite's timeout.
            stacks = [
                f"{task.get_name()}:\n{_awaiting(task)}"
                for task in asyncio.all_tasks()
                if task is not asyncio.current_task()
            ]
            cleanup.cancel()
            raise AssertionError("the broker did not shut down in 10 s:\n" + "\n".join(stacks))
        await cleanup
    # A handler left waiting on a future nobody settles would hold shutdown up for seconds.
    assert time.monotonic() - started < 1.0, "a request handler was left hanging"


def _awaiting(task: asyncio.Task[Any]) -> str:
    """What a suspended task waits on: its chain of awaited coroutines, innermost last."""
    lines: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(lines) < 20:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines) + "\n"


CONFIG = BrokerConfig(poll_timeout=0.5, answer_timeout=0.5)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A broker under aiohttp's default runner, which does not cancel handlers."""
    async with serving(CONFIG, handler_cancellation=False) as broker:
        yield broker


@pytest.fixture(params=[False, True], ids=["sweep", "handler-cancellation"])
async def any_broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A broker that learns of hang-ups from its sweep, or from handler cancellation."""
    async with serving(CONFIG, handler_cancellation=request.param) as broker:
        yield broker


@pytest.fixture(autouse=True)
def quick_disconnect_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "DISCONNECT_CHECK_INTERVAL", 0.05)


async def test_volunteer_poll_client_offer_answer_round_trip(broker: Broker) -> None:
    polling = asyncio.create_task(broker.poll("alpha"))
    await broker.until("volunteers", 1)
    client = asyncio.create_task(broker.offer())
    offer = await polling
    assert isinstance(offer, PollOffer)
    assert offer.sdp == OFFER_SDP
    status, body = await broker.answer("alpha", offer.offer_id)
    assert status == 200
    assert decode_answer_accepted(body) == AnswerAccepted()
    status, body = await client
    assert status == 200
    assert decode_client_answer(body) == ClientAnswer(ANSWER_SDP)
    # The offer is gone once answered.
    status, body = await broker.answer("alpha", offer.offer_id)
    assert status == 404
    assert decode_error(body).code == "unknown_offer"


async def test_offer_waits_for_a_volunteer_that_polls_later(broker: Broker) -> None:
    client = asyncio.create_task(broker.offer())
    await broker.until("waiting_offers", 1)
    offer = await broker.poll("late-comer")
    assert isinstance(offer, PollOffer)
    assert (await broker.answer("late-comer", offer.offer_id))[0] == 200
    assert (await client)[0] == 200


async def test_no_volunteer_is_503_after_answer_timeout(broker: Broker) -> None:
    started = time.monotonic()
    status, body = await broker.offer()
    elapsed = time.monotonic() - started
    assert status == 503
    error = decode_error(body)
    assert error.code == "no_volunteer"
    assert "try again" in error.message
    assert 0.45 <= elapsed < 1.5
    assert (await broker.counts())["waiting_offers"] == 0


async def test_full_volunteer_gets_no_offer(broker: Broker) -> None:
    polling = asyncio.create_task(broker.poll("full-one", capacity=2, clients=2))
    status, _ = await broker.offer()
    assert status == 503
    assert await polling == PollIdle()


async def test_poll_is_answered_idle_after_poll_timeout(broker: Broker) -> None:
    started = time.monotonic()
    assert await broker.poll("patient") == PollIdle()
    assert 0.45 <= time.monotonic() - started < 1.5
    assert (await broker.counts())["volunteers"] == 1


async def hang_up(broker: Broker, request: Callable[[Broker], Coroutine[Any, Any, object]]) -> None:
    """Make a request from a connection of its own, then drop the connection."""
    async with aiohttp.ClientSession() as doomed_http:
        task = asyncio.create_task(request(Broker(broker.url, broker.app, doomed_http)))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_volunteer_hanging_up_mid_poll_loses_no_offer(any_broker: Broker) -> None:
    broker = any_broker
    await hang_up(broker, lambda b: b.poll("doomed", clients=0))
    # The doomed volunteer is the least loaded, so only its departure lets this one win.
    polling = asyncio.create_task(broker.poll("survivor", clients=4))
    await broker.until("volunteers", 2)
    for _ in range(100):
        if broker.open_polls() == 1:
            break
        await asyncio.sleep(0.01)
    assert broker.open_polls() == 1
    client = asyncio.create_task(broker.offer())
    offer = await polling
    assert isinstance(offer, PollOffer)
    assert (await broker.answer("survivor", offer.offer_id))[0] == 200
    assert (await client)[0] == 200


async def test_offer_handed_to_a_dead_poll_goes_to_another_volunteer(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even before anything notices the hang-up, the offer is not given to a dead poll."""
    monkeypatch.setattr(server, "DISCONNECT_CHECK_INTERVAL", 60.0)
    await hang_up(broker, lambda b: b.poll("doomed", clients=0))
    polling = asyncio.create_task(broker.poll("survivor", clients=4))
    for _ in range(100):
        if broker.open_polls() == 2:
            break
        await asyncio.sleep(0.01)
    assert broker.open_polls() == 2  # the doomed poll is still open
    client = asyncio.create_task(broker.offer())
    offer = await polling
    assert isinstance(offer, PollOffer)
    assert (await broker.answer("survivor", offer.offer_id))[0] == 200
    assert (await client)[0] == 200


async def test_client_hanging_up_drops_its_offer(any_broker: Broker) -> None:
    broker = any_broker
    await hang_up(broker, lambda b: b.offer())
    await broker.until("waiting_offers", 0)
    # A volunteer polling now is not handed the dead client's offer.
    assert await broker.poll("after") == PollIdle()


async def test_malformed_json_is_400_with_a_message(broker: Broker) -> None:
    for path in ("/v1/client/offer", "/v1/volunteer/poll", "/v1/volunteer/answer"):
        status, body = await broker.post(path, b'{"version": 1, "sdp": ')
        assert status == 400
        error = decode_error(body)
        assert error.code == "bad_request"
        assert "not JSON" in error.message


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b"[1]", "JSON object"),
        (b'{"version": 1}', "'sdp' is missing"),
        (b'{"version": 1, "sdp": 3}', "must be a string"),
        (b"", "not JSON"),
    ],
)
async def test_bad_request(broker: Broker, body: bytes, phrase: str) -> None:
    status, data = await broker.post("/v1/client/offer", body)
    assert status == 400
    assert phrase in decode_error(data).message


NOT_SESSION = "field 'sdp' is not a session description (it must start with 'v=0')"
NO_DATA_CHANNEL = "field 'sdp' has no data channel section (m=application ... webrtc-datachannel)"
DATA_M_LINE = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"


@pytest.mark.parametrize("path", ["/v1/client/offer", "/v1/volunteer/answer"])
@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        pytest.param("hello", NOT_SESSION, id="not-sdp"),
        pytest.param(OFFER_SDP.removeprefix("v=0\r\n"), NOT_SESSION, id="no-v-line"),
        pytest.param(OFFER_SDP.split("m=")[0], NO_DATA_CHANNEL, id="no-m-line"),
        pytest.param(
            OFFER_SDP.replace(DATA_M_LINE, "m=audio 9 UDP/TLS/RTP/SAVPF 111"),
            NO_DATA_CHANNEL,
            id="audio-only",
        ),
        pytest.param(
            OFFER_SDP.replace(DATA_M_LINE, "m=application 9 UDP/BFCP *"),
            NO_DATA_CHANNEL,
            id="application-not-datachannel",
        ),
    ],
)
async def test_sdp_without_a_data_channel_is_400(
    broker: Broker, path: str, sdp: str, message: str
) -> None:
    fields = {"volunteer_id": "volunteer-bad-sdp", "offer_id": "o1", "sdp": sdp}
    status, data = await broker.post(path, json.dumps({"version": 1, **fields}).encode())
    assert status == 400
    error = decode_error(data)
    assert error.code == "bad_request"
    assert error.message == message
    # Turned away before it reached the matchmaker: nothing waits for a volunteer.
    assert (await broker.counts())["waiting_offers"] == 0


async def test_bad_poll_fields_are_400(broker: Broker) -> None:
    body = json.dumps(
        {"version": 1, "volunteer_id": "abc", "capacity": 8, "clients": 0, "kind": "headless"}
    )
    status, data = await broker.post("/v1/volunteer/poll", body.encode())
    assert status == 400
    assert "volunteer_id" in decode_error(data).message


async def test_body_over_64_kib_is_413(broker: Broker) -> None:
    big = encode(ClientOffer(OFFER_SDP + "a=x-pad:" + "x" * (70 * 1024) + "\r\n"))
    status, body = await broker.post("/v1/client/offer", big)
    assert status == 413
    assert decode_error(body).code == "too_large"


async def test_chunked_body_over_64_kib_is_413(broker: Broker) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"version": 1, "sdp": ' + json.dumps(OFFER_SDP + "a=x-pad:").encode()[:-1]
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    async with broker.http.post(
        broker.url + "/v1/client/offer", data=chunks(), headers=JSON
    ) as resp:
        assert resp.status == 413
        assert decode_error(await resp.read()).code == "too_large"


async def test_version_2_is_422_with_supported_versions(broker: Broker) -> None:
    request = json.dumps({"version": 2, "sdp": OFFER_SDP}).encode()
    status, body = await broker.post("/v1/client/offer", request)
    assert status == 422
    error = decode_error(body)
    assert error.code == "unsupported_version"
    assert error.supported == (1,)
    assert json.loads(body)["supported"] == [1]


async def carry(
    volunteer: str, client: str, poll_on: Broker, offer_on: Broker, answer_on: Broker
) -> str:
    """One session: `volunteer` polls `poll_on`, a client at address `client` (through the
    trusted front) offers on `offer_on`, and the volunteer answers on `answer_on`; the
    offer's id."""
    polling = asyncio.create_task(poll_on.poll(volunteer))
    for _ in range(100):
        if (await poll_on.counts())["volunteers"] >= 1 and poll_on.open_polls() >= 1:
            break
        await asyncio.sleep(0.01)
    offering = asyncio.create_task(offer_on.offer(forwarded_for=client))
    offer = await polling
    assert isinstance(offer, PollOffer), offer
    assert (await answer_on.answer(volunteer, offer.offer_id))[0] == 200
    assert (await offering)[0] == 200
    return offer.offer_id


EARNING = BrokerConfig(
    poll_timeout=2.0,
    answer_timeout=2.0,
    report_secret="s3cret",
    earn_room=True,
    trusted_proxies=("127.0.0.0/8",),
)


@pytest.fixture
def no_earning_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offers handed within the last minute do not count as load (test_guard.py tests
    that rule): one volunteer can carry several sessions in a row."""
    monkeypatch.setattr(matchmaker, "EARNED_WINDOW", 0.0)


@pytest.mark.usefixtures("no_earning_window")
async def test_volunteers_earn_by_the_client_networks_they_carried() -> None:
    """What a volunteer has proven counts client networks, not sessions: a censor that runs
    its own clients through its own fake volunteer proves one network however often."""
    async with serving(EARNING, handler_cancellation=True) as broker:
        state = broker.app[BROKER_KEY]
        assert await state.proven("volunteer-v") == 0
        first = await carry("v", "198.51.100.7", broker, broker, broker)
        assert await broker.report_carried("s3cret", first) == 1
        assert await broker.report_carried("s3cret", first) == 0  # once only
        assert await state.proven("volunteer-v") == 1
        for client in ("198.51.100.8", "198.51.100.200"):  # the same /24
            assert await broker.report_carried("s3cret", await carry("v", client, *[broker] * 3))
        assert await state.proven("volunteer-v") == 1
        assert await broker.report_carried("s3cret", await carry("v", "203.0.113.9", *[broker] * 3))
        assert await state.proven("volunteer-v") == 2
        assert await state.proven("volunteer-other") == 0


async def test_answer_to_unknown_offer_is_404(broker: Broker) -> None:
    status, body = await broker.answer("stranger", "no-such-offer")
    assert status == 404
    error = decode_error(body)
    assert error.code == "unknown_offer"
    assert error.message


async def test_health(broker: Broker) -> None:
    assert await broker.health() == {
        "version": 1,
        "status": "ok",
        "volunteers": 0,
        "waiting_offers": 0,
    }
    polling = asyncio.create_task(broker.poll("healthy"))
    await broker.until("volunteers", 1)
    # Anyone may ask: one volunteer is not told apart from eight.
    assert (await broker.health())["volunteers"] == 8
    await polling
    polls = [asyncio.create_task(broker.poll(f"healthy-{i}")) for i in range(9)]
    await broker.until("volunteers", 10)
    assert (await broker.health())["volunteers"] == 16
    await asyncio.gather(*polls)


async def test_metrics(broker: Broker) -> None:
    polling = asyncio.create_task(broker.poll("counted"))
    await broker.until("volunteers", 1)
    client = asyncio.create_task(broker.offer())
    offer = await polling
    assert isinstance(offer, PollOffer)
    await broker.answer("counted", offer.offer_id)
    await client
    assert (await broker.offer())[0] == 503
    async with broker.http.get(broker.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    lines = set(text.splitlines())
    assert "unwall_broker_offers_total 2.0" in lines
    assert "unwall_broker_answers_total 1.0" in lines
    assert "unwall_broker_no_volunteer_total 1.0" in lines
    assert "unwall_broker_volunteers 8.0" in lines
    assert "unwall_broker_waiting_offers 0.0" in lines


async def test_errors_are_logged_without_traceback(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        await broker.post("/v1/client/offer", b"nonsense")
        await broker.post("/v1/client/offer", b'{"version": 9}')
        await broker.answer("stranger", "no-such-offer")
        await broker.post("/v1/client/offer", b"{" + b" " * MAX_BODY + b"}")
    assert caplog.records
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_two_apps_in_one_process_have_their_own_metrics() -> None:
    config = BrokerConfig(answer_timeout=0.05)
    async with (
        serving(config, handler_cancellation=False) as first,
        serving(config, handler_cancellation=False) as second,
    ):
        assert (await first.offer())[0] == 503
        for broker, expected in ((first, "1.0"), (second, "0.0")):
            async with broker.http.get(broker.url + "/metrics") as resp:
                assert f"unwall_broker_offers_total {expected}" in await resp.text()


async def test_shutdown_releases_waiting_requests() -> None:
    runner, url = await start(BrokerConfig(poll_timeout=30, answer_timeout=30))
    async with aiohttp.ClientSession() as http:
        broker = Broker(url, runner.app, http)
        polling = asyncio.create_task(broker.poll("shutdown"))
        await broker.until("volunteers", 1)
        started = time.monotonic()
        await runner.cleanup()
        assert await polling == PollIdle()
        assert time.monotonic() - started < 1.5


async def test_run_broker_serves_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unwall.broker"):
        task = asyncio.create_task(run_broker(BrokerConfig(), "127.0.0.1", 0))
        for _ in range(200):
            if any("broker listening on" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    [line] = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
    url = line.removeprefix("broker listening on ")
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith(":0")
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/health") as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- CORS: the widget calls the volunteer API from pages of any origin ----------------------

PAGE_ORIGIN = {"Origin": "http://news.example"}


async def cors_request(
    broker: Broker, method: str, path: str, body: bytes | None = None
) -> tuple[int, str | None, bytes]:
    """Status, Access-Control-Allow-Origin (None when absent) and body of one request."""
    headers = {**JSON, **PAGE_ORIGIN} if body is not None else PAGE_ORIGIN
    async with broker.http.request(method, broker.url + path, data=body, headers=headers) as resp:
        return resp.status, resp.headers.get("Access-Control-Allow-Origin"), await resp.read()


def poll_body(name: str) -> bytes:
    return encode(VolunteerPoll(f"volunteer-{name}", 8, 0, "browser"))


async def test_every_volunteer_api_response_allows_any_origin(broker: Broker) -> None:
    """An offer-carrying poll is written before the handler returns; it needs CORS too."""
    status, allowed, body = await cors_request(broker, "POST", "/v1/volunteer/poll", poll_body("a"))
    assert (status, allowed, decode_poll_response(body)) == (200, "*", PollIdle())

    polling = asyncio.create_task(
        cors_request(broker, "POST", "/v1/volunteer/poll", poll_body("a"))
    )
    await broker.until("volunteers", 1)
    client = asyncio.create_task(broker.offer())
    status, allowed, body = await polling
    offer = decode_poll_response(body)
    assert isinstance(offer, PollOffer)
    assert (status, allowed) == (200, "*")

    answer = encode(VolunteerAnswer("volunteer-a", offer.offer_id, ANSWER_SDP))
    assert (await cors_request(broker, "POST", "/v1/volunteer/answer", answer))[:2] == (200, "*")
    assert (await client)[0] == 200
    # Errors: the offer is gone (404), not JSON (400), too large (413), no egress (503), and
    # the router's own answers (405: every path here has an OPTIONS route for preflights).
    assert (await cors_request(broker, "POST", "/v1/volunteer/answer", answer))[:2] == (404, "*")
    for method, path, request, wanted in (
        ("POST", "/v1/volunteer/poll", b"{not json", 400),
        ("POST", "/v1/volunteer/poll", b"{" + b" " * MAX_BODY + b"}", 413),
        ("GET", "/v1/volunteer/config", None, 503),
        ("GET", "/v1/volunteer/nothing-here", None, 405),
        ("GET", "/v1/volunteer/poll", None, 405),
    ):
        status, allowed, _ = await cors_request(broker, method, path, request)
        assert (status, allowed) == (wanted, "*"), (method, path)
    # The client API is not for web pages: no CORS there.
    assert (await cors_request(broker, "POST", "/v1/client/offer", b"{}"))[1] is None


# -- NAT-aware matching and TURN credentials --------------------------------------------------


async def test_no_compatible_volunteer_is_its_own_503_and_counted(broker: Broker) -> None:
    polling = asyncio.create_task(broker.poll("sym", nat="symmetric"))
    await broker.until("volunteers", 1)
    status, body = await broker.offer(nat="port-restricted")
    assert status == 503
    error = decode_error(body)
    assert error.code == "no_compatible_volunteer"
    assert "port-restricted NAT" in error.message
    assert "TURN server" in error.message
    assert await polling == PollIdle()
    # The same volunteer serves a client with TURN.
    polling = asyncio.create_task(broker.poll("sym", nat="symmetric"))
    await broker.until("waiting_offers", 0)
    relayed = asyncio.create_task(broker.offer(nat="symmetric", relay=True))
    offer = await polling
    assert isinstance(offer, PollOffer)
    assert (await broker.answer("sym", offer.offer_id))[0] == 200
    assert (await relayed)[0] == 200
    lines = await broker.metrics()
    assert "unwall_broker_offers_incompatible_total 1.0" in lines
    assert "unwall_broker_no_volunteer_total 0.0" in lines
    assert 'unwall_broker_offers_by_nat_total{nat="port-restricted"} 8.0' in lines
    assert 'unwall_broker_offers_by_nat_total{nat="symmetric"} 8.0' in lines
    assert 'unwall_broker_offers_by_nat_total{nat="none"} 0.0' in lines
    assert 'unwall_broker_volunteers_by_nat{nat="symmetric"} 8.0' in lines
    assert 'unwall_broker_volunteers_by_nat{nat="unknown"} 0.0' in lines


async def test_no_volunteer_at_all_stays_no_volunteer(broker: Broker) -> None:
    status, body = await broker.offer(nat="symmetric")
    assert (status, decode_error(body).code) == (503, "no_volunteer")


async def test_an_open_volunteer_is_kept_for_the_client_that_needs_it(broker: Broker) -> None:
    open_poll = asyncio.create_task(broker.poll("open", nat="full-cone"))
    restricted_poll = asyncio.create_task(broker.poll("pr", nat="port-restricted"))
    await broker.until("volunteers", 2)
    easy = asyncio.create_task(broker.offer(nat="none"))
    got = await restricted_poll
    assert isinstance(got, PollOffer)
    assert not open_poll.done()
    hard = asyncio.create_task(broker.offer(nat="symmetric"))
    got_open = await open_poll
    assert isinstance(got_open, PollOffer)
    for name, offer, client in (("pr", got, easy), ("open", got_open, hard)):
        assert (await broker.answer(name, offer.offer_id))[0] == 200
        assert (await client)[0] == 200


TURN_SECRET = "s3cret-shared-with-coturn"
TURN_URLS = ("turn:203.0.113.5:3478", "turn:203.0.113.5:3478?transport=tcp")


async def test_volunteers_get_short_lived_turn_credentials() -> None:
    config = BrokerConfig(
        poll_timeout=0.3,
        answer_timeout=0.5,
        egress_url="ws://127.0.0.1:9/v1/relay",
        turn=TurnIssuer(TURN_SECRET, TURN_URLS, ttl=600.0),
    )
    async with serving(config, handler_cancellation=False) as broker:
        idle = await broker.poll("relayed")
        polling = asyncio.create_task(broker.poll("relayed"))
        await broker.until("volunteers", 1)
        client = asyncio.create_task(broker.offer())
        offer = await polling
        assert isinstance(offer, PollOffer)
        assert (await broker.answer("relayed", offer.offer_id))[0] == 200
        await client
        async with broker.http.get(broker.url + "/v1/volunteer/config") as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "no-store"
            widget = await resp.json()
    assert isinstance(idle, PollIdle)
    assert "turn" not in widget  # anyone may GET it: credentials only in poll answers
    servers = [*idle.turn, *offer.turn]
    assert len(servers) == 2
    for turn in servers:
        assert turn.urls == TURN_URLS
        expiry, _, nonce = turn.username.partition(":")
        assert abs(int(expiry) - (time.time() + 600)) < 5
        assert len(nonce) >= 12
        assert turn.credential == turn_password(TURN_SECRET, turn.username)
    assert idle.turn[0].username != offer.turn[0].username  # fresh for every answer


async def test_without_a_turn_secret_nobody_gets_credentials(broker: Broker) -> None:
    status, body = await broker.post(
        "/v1/volunteer/poll", encode(VolunteerPoll("volunteer-x", 8, 0, "browser"))
    )
    assert status == 200
    assert "turn" not in json.loads(body)
