import { describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  BrowserVolunteer,
  CHANNEL_OPEN_TIMEOUT_MS,
  ICE_GATHER_TIMEOUT_MS,
} from "../src/unwall/broker/static/volunteer.js";
import { statusLine } from "../src/unwall/broker/static/logic.js";
import { CONFIG, OFFER_SDP, T, bytes, connectedClient, deliverOffer, makeEnv } from "./fakes.mjs";

const MiB = 1 << 20;
const POLL = "/v1/volunteer/poll";
const ANSWER = "/v1/volunteer/answer";
const CONFIG_PATH = "/v1/volunteer/config";

const lastStatus = (env) => env.statuses[env.statuses.length - 1];

describe("BrowserVolunteer: signalling", () => {
  test("config, then poll -> offer -> answer posted with the gathered SDP", async () => {
    const env = await makeEnv(BrowserVolunteer, { gather: "manual", capacity: 3 });
    const { broker, clock, pcs, volunteer } = env;
    volunteer.start();
    assert.deepEqual(env.statuses, [{ state: "starting" }]);
    await clock.advance(0);

    const [config] = broker.all(CONFIG_PATH);
    assert.equal(config.url, "http://broker.test/v1/volunteer/config");
    assert.equal(config.method, "GET");
    assert.deepEqual(lastStatus(env), { state: "idle" });

    const poll = broker.one(POLL);
    assert.equal(poll.url, "http://broker.test/v1/volunteer/poll");
    assert.equal(poll.method, "POST");
    assert.equal(poll.headers["Content-Type"], "application/json");
    assert.deepEqual(poll.body, {
      version: 1,
      volunteer_id: "test-volunteer-0001",
      capacity: 3,
      clients: 0,
      kind: "browser",
    });

    poll.respond(200, { version: 1, status: "offer", offer_id: "off-A", sdp: OFFER_SDP });
    await clock.advance(0);
    assert.equal(pcs.length, 1);
    const pc = pcs[0];
    assert.deepEqual(pc.config, { iceServers: [{ urls: ["stun:stun.test:3478"] }] });
    assert.deepEqual(pc.remoteDescription, { type: "offer", sdp: OFFER_SDP });
    // Not helping anyone yet (nothing is connected), but counted against capacity at once:
    // the next poll is already out and reports the client.
    assert.deepEqual(lastStatus(env), { state: "idle" });
    assert.equal(volunteer.stats().clientsNow, 0);
    assert.equal(volunteer.stats().clientsConnecting, 1);
    assert.deepEqual(broker.one(POLL).body.clients, 1);

    // No answer until gathering completes.
    assert.equal(broker.all(ANSWER).length, 0);
    const gathered = "v=0\r\nwith-candidates\r\na=candidate:1 1 udp 1 192.0.2.7 4000 typ host\r\n";
    pc.finishGathering(gathered);
    await clock.advance(0);
    const answer = broker.one(ANSWER);
    assert.equal(answer.url, "http://broker.test/v1/volunteer/answer");
    assert.equal(answer.method, "POST");
    assert.deepEqual(answer.body, {
      version: 1,
      volunteer_id: "test-volunteer-0001",
      offer_id: "off-A",
      sdp: gathered,
    });
    answer.respond(200, { version: 1, status: "ok" });
    await clock.advance(0);
    assert.equal(pc.closeCalls, 0);
    volunteer.stop();
  });

  test("an empty ice_servers list gives no ICE servers at all", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, ice_servers: [] } });
    env.volunteer.start();
    await env.clock.advance(0);
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config, { iceServers: [] });
    env.volunteer.stop();
  });

  test("ICE gathering that never completes: the answer goes after 5 s with what there is", async () => {
    const env = await makeEnv(BrowserVolunteer, { gather: "never" });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o", sdp: OFFER_SDP });
    await env.clock.advance(ICE_GATHER_TIMEOUT_MS - 1);
    assert.equal(env.broker.all(ANSWER).length, 0);
    await env.clock.advance(1);
    const answer = env.broker.one(ANSWER);
    assert.equal(answer.body.sdp, "v=0\r\nanswer-without-candidates\r\n");
    env.volunteer.stop();
  });

  test("an idle poll is followed by another poll", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "idle" });
    await env.clock.advance(0);
    assert.equal(env.broker.all(POLL).length, 2);
    assert.equal(env.broker.pending(POLL).length, 1);
    assert.deepEqual(lastStatus(env), { state: "idle" });
    env.volunteer.stop();
  });

  test("404 on the answer: the client gave up, its pc closes quietly", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env, "gone", { answerStatus: 404 });
    assert.equal(pc.closeCalls, 1);
    assert.equal(env.volunteer.stats().clientsNow, 0);
    assert.equal(env.volunteer.stats().clientsTotal, 0);
    assert.ok(!env.statuses.some((s) => s.state === "error"), JSON.stringify(env.statuses));
    assert.deepEqual(lastStatus(env), { state: "idle" });
    assert.equal(env.broker.pending(POLL).length, 1, "keeps polling");
    env.volunteer.stop();
  });

  test("a channel that does not open within 20 s closes the pc", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    await env.clock.advance(CHANNEL_OPEN_TIMEOUT_MS - 10);
    assert.equal(pc.closeCalls, 0);
    await env.clock.advance(10);
    assert.equal(pc.closeCalls, 1);
    assert.equal(env.volunteer.stats().clientsNow, 0);
    env.volunteer.stop();
  });

  test("a malformed offer closes that client and keeps polling", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "bad", sdp: "not sdp" });
    await env.clock.advance(0);
    assert.equal(env.pcs[0].closeCalls, 1);
    assert.equal(env.broker.all(ANSWER).length, 0);
    assert.equal(env.volunteer.stats().clientsNow, 0);
    assert.equal(env.broker.pending(POLL).length, 1);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "offer-unusable", clients: 0 });
    assert.equal(
      statusLine(lastStatus(env), T),
      "Couldn't answer a person who needed help: this browser can't use their offer.",
    );
    env.volunteer.stop();
  });
});

describe("BrowserVolunteer: a person counts as helped once their channel opens", () => {
  const CONNECT_FAILED = "Couldn't connect to a person who needed help (their network or yours blocks it).";

  test("answered is not helped: idle until the channel opens, then helping", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    assert.deepEqual(lastStatus(env), { state: "idle" });
    assert.ok(!env.statuses.some((s) => s.state === "helping"), JSON.stringify(env.statuses));
    assert.equal(env.statsEvents.at(-1).clientsNow, 0);
    assert.equal(env.statsEvents.at(-1).clientsConnecting, 1);
    const channel = pc.announceChannel("connecting");
    assert.deepEqual(lastStatus(env), { state: "idle" });
    channel.open();
    assert.deepEqual(lastStatus(env), { state: "helping", clients: 1 });
    assert.deepEqual(
      [env.statsEvents.at(-1).clientsNow, env.statsEvents.at(-1).clientsConnecting],
      [1, 0],
    );
    env.volunteer.stop();
  });

  test("a channel that never opens: nobody was helped, and the widget says why", async () => {
    const env = await makeEnv(BrowserVolunteer);
    const { broker, clock, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    await deliverOffer(env);
    await clock.advance(CHANNEL_OPEN_TIMEOUT_MS);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "connect-failed", clients: 0 });
    assert.equal(statusLine(lastStatus(env), T), CONNECT_FAILED);
    assert.ok(!env.statuses.some((s) => s.state === "helping"), JSON.stringify(env.statuses));
    assert.deepEqual(volunteer.stats(), {
      clientsNow: 0,
      clientsConnecting: 0,
      clientsTotal: 0,
      clientsOverMedia: 0,
      bytesToEgress: 0,
      bytesToClients: 0,
      dropped: 0,
    });
    // It keeps offering help (the poll out since the offer reported 1, the next one 0);
    // the next person who does connect clears the message.
    assert.equal(broker.one(POLL).body.clients, 1);
    broker.one(POLL).respond(200, { version: 1, status: "idle" });
    await clock.advance(0);
    assert.equal(broker.one(POLL).body.clients, 0);
    assert.equal(lastStatus(env).kind, "connect-failed", "an idle poll does not hide it");
    await connectedClient(env, "next");
    assert.deepEqual(lastStatus(env), { state: "helping", clients: 1 });
    volunteer.stop();
  });

  const failures = [
    ["the connection fails", (pc) => pc.setConnectionState("failed")],
    ["ICE fails", (pc) => pc.setIceConnectionState("failed")],
  ];
  for (const [name, fail] of failures) {
    test(`${name} before the channel opens: connect-failed at once`, async () => {
      const env = await makeEnv(BrowserVolunteer);
      env.volunteer.start();
      await env.clock.advance(0);
      const { pc } = await deliverOffer(env);
      fail(pc);
      await env.clock.advance(0);
      assert.equal(pc.closeCalls, 1);
      assert.deepEqual(lastStatus(env), { state: "error", kind: "connect-failed", clients: 0 });
      assert.equal(env.volunteer.stats().clientsConnecting, 0);
      assert.equal(env.broker.pending(POLL).length, 1, "keeps polling");
      env.volunteer.stop();
      assert.deepEqual(lastStatus(env), { state: "off" });
    });
  }

  test("a failure beside a person being helped says both", async () => {
    const env = await makeEnv(BrowserVolunteer);
    await connectedClient(env, "working");
    const { pc } = await deliverOffer(env, "blocked");
    pc.setIceConnectionState("failed");
    await env.clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "connect-failed", clients: 1 });
    assert.equal(statusLine(lastStatus(env), T), `${CONNECT_FAILED} Helping 1 person now.`);
    env.volunteer.stop();
  });

  test("offers being connected count against capacity", async () => {
    const env = await makeEnv(BrowserVolunteer, { capacity: 1 });
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    assert.equal(env.broker.pending(POLL).length, 0, "full while connecting: no poll");
    pc.setConnectionState("failed");
    await env.clock.advance(0);
    assert.equal(env.broker.one(POLL).body.clients, 0);
    env.volunteer.stop();
  });

  test("createAnswer failing: offer-unusable", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    env.pcs.failCreateAnswer = true;
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o", sdp: OFFER_SDP });
    await env.clock.advance(0);
    assert.equal(env.pcs[0].closeCalls, 1);
    assert.equal(lastStatus(env).kind, "offer-unusable");
    env.volunteer.stop();
  });

  const undelivered = [
    ["a 5xx", (answer) => answer.respond(503, { version: 1, error: "no_volunteer", message: "x" })],
    ["a 400", (answer) => answer.respond(400, { version: 1, error: "bad_request", message: "x" })],
    ["a network error", (answer) => answer.fail()],
  ];
  for (const [name, respond] of undelivered) {
    test(`the broker answering the answer with ${name}: answer-undelivered`, async () => {
      const env = await makeEnv(BrowserVolunteer);
      env.volunteer.start();
      await env.clock.advance(0);
      env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o", sdp: OFFER_SDP });
      await env.clock.advance(0);
      respond(env.broker.one(ANSWER));
      await env.clock.advance(0);
      assert.equal(env.pcs[0].closeCalls, 1);
      assert.deepEqual(lastStatus(env), { state: "error", kind: "answer-undelivered", clients: 0 });
      assert.equal(
        statusLine(lastStatus(env), T),
        "Couldn't answer a person who needed help: the unwall server didn't take the answer.",
      );
      env.volunteer.stop();
    });
  }

  test("stop() while connecting is no failure", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    await deliverOffer(env);
    env.volunteer.stop();
    await env.clock.advance(CHANNEL_OPEN_TIMEOUT_MS);
    assert.ok(!env.statuses.some((s) => s.state === "error"), JSON.stringify(env.statuses));
    assert.deepEqual(lastStatus(env), { state: "off" });
  });
});

describe("BrowserVolunteer: capacity", () => {
  test("no poll while full; polling resumes when a client leaves", async () => {
    const env = await makeEnv(BrowserVolunteer, { capacity: 2 });
    const { broker, clock, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    const first = await connectedClient(env, "one");
    assert.equal(broker.one(POLL).body.clients, 1);
    await connectedClient(env, "two");
    assert.equal(volunteer.stats().clientsNow, 2);
    assert.equal(broker.pending(POLL).length, 0, "full: no poll");
    await clock.advance(60_000);
    assert.equal(broker.pending(POLL).length, 0, "still no poll a minute later");
    assert.equal(broker.all(POLL).length, 2);
    assert.deepEqual(lastStatus(env), { state: "helping", clients: 2 });

    first.channel.remoteClose();
    await clock.advance(0);
    assert.equal(volunteer.stats().clientsNow, 1);
    assert.equal(broker.one(POLL).body.clients, 1);
    assert.deepEqual(lastStatus(env), { state: "helping", clients: 1 });
    volunteer.stop();
  });
});

describe("BrowserVolunteer: broker trouble", () => {
  test("broker down: error with backoff, retries, then recovers", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: null });
    const { broker, clock, volunteer } = env;
    volunteer.start();
    await clock.advance(0);

    // The config request fails: 1 s, then 2 s.
    broker.one(CONFIG_PATH).fail();
    await clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "broker-unreachable", clients: 0, retryMs: 1000 });
    assert.equal(statusLine(lastStatus(env), T), "Can't reach the unwall server. Retrying in 1 s.");
    await clock.advance(999);
    assert.equal(broker.all(CONFIG_PATH).length, 1);
    await clock.advance(1);
    broker.one(CONFIG_PATH).respond(502, undefined);
    await clock.advance(0);
    assert.equal(lastStatus(env).retryMs, 2000);
    await clock.advance(2000);

    // It comes back.
    broker.one(CONFIG_PATH).respond(200, CONFIG);
    await clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "idle" });

    // A 5xx poll is trouble too; the backoff starts again from 1 s after the success.
    broker.one(POLL).respond(503, { version: 1, error: "x", message: "y" });
    await clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "broker-unreachable", clients: 0, retryMs: 1000 });
    await clock.advance(1000);
    broker.one(POLL).fail();
    await clock.advance(0);
    assert.equal(lastStatus(env).retryMs, 2000);
    await clock.advance(2000);

    // Success resets the status and the backoff.
    broker.one(POLL).respond(200, { version: 1, status: "idle" });
    await clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "idle" });
    broker.one(POLL).fail();
    await clock.advance(0);
    assert.equal(lastStatus(env).retryMs, 1000);
    volunteer.stop();
    assert.deepEqual(lastStatus(env), { state: "off" });
  });

  test("the backoff doubles up to 30 s", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: null });
    env.broker.on(CONFIG_PATH, (r) => r.fail());
    env.volunteer.start();
    const delays = [];
    for (let i = 0; i < 7; i += 1) {
      await env.clock.advance(0);
      delays.push(lastStatus(env).retryMs);
      await env.clock.advance(lastStatus(env).retryMs);
    }
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    env.volunteer.stop();
  });

  test("no RTCPeerConnection: webrtc-unavailable, and nothing is fetched", async () => {
    const env = await makeEnv(BrowserVolunteer, { RTCPeerConnection: undefined });
    env.volunteer.start();
    await env.clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "webrtc-unavailable", clients: 0 });
    assert.equal(statusLine(lastStatus(env), T), "This browser can't relay: WebRTC is unavailable.");
    assert.equal(env.broker.requests.length, 0);
    assert.equal(env.volunteer.running, false);
    await env.clock.advance(60_000);
    assert.equal(env.broker.requests.length, 0);
  });
});

describe("BrowserVolunteer: relay", () => {
  test("messages go through unchanged both ways, early ones included", async () => {
    const env = await makeEnv(BrowserVolunteer);
    const { clock, sockets, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    const { pc } = await deliverOffer(env);
    const channel = pc.announceChannel("open");
    assert.equal(channel.binaryType, "arraybuffer");
    assert.equal(volunteer.stats().clientsTotal, 1);

    // The client talks before the WebSocket is up.
    const early = [bytes(1, 2, 3), bytes(4), new Uint8Array(1200).fill(7).buffer];
    for (const m of early) channel.receive(m);
    assert.equal(sockets.length, 1);
    const socket = sockets[0];
    // The offer's id rides along, for the egress's report of who carried the session.
    assert.equal(socket.url, "ws://egress.test/v1/relay?offer=offer-1");
    assert.equal(socket.binaryType, "arraybuffer");
    assert.deepEqual(socket.sent, []);

    socket.accept();
    assert.deepEqual(socket.sent, early);
    early.forEach((m, i) => assert.equal(socket.sent[i], m, "the very same message object"));

    const later = bytes(9, 9);
    channel.receive(later);
    assert.equal(socket.sent[3], later);

    const down = [bytes(0xde, 0xad), new Uint8Array(16384).fill(1).buffer];
    for (const m of down) socket.receive(m);
    assert.equal(channel.sent.length, 2);
    down.forEach((m, i) => assert.equal(channel.sent[i], m));

    const stats = volunteer.stats();
    assert.equal(stats.bytesToEgress, 3 + 1 + 1200 + 2);
    assert.equal(stats.bytesToClients, 2 + 16384);
    assert.equal(stats.dropped, 0);
    assert.equal(stats.clientsTotal, 1);
    assert.equal(stats.clientsNow, 1);

    // The byte counters are reported too, coalesced.
    await clock.advance(1000);
    assert.equal(env.statsEvents.at(-1).bytesToClients, 2 + 16384);
    volunteer.stop();
  });

  test("a channel announced before it opens starts relaying when it opens", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    const channel = pc.announceChannel("connecting");
    assert.equal(env.sockets.length, 0);
    assert.equal(env.volunteer.stats().clientsTotal, 0);
    channel.open();
    assert.equal(env.sockets.length, 1);
    assert.equal(env.volunteer.stats().clientsTotal, 1);
    channel.open(); // a second open event changes nothing
    assert.equal(env.sockets.length, 1);
    env.volunteer.stop();
  });

  test("tail-drop: the early queue is bounded at 1 MiB", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    const channel = pc.announceChannel("open");
    const big = () => new Uint8Array(256 * 1024).buffer;
    for (let i = 0; i < 4; i += 1) channel.receive(big()); // exactly 1 MiB: all kept
    channel.receive(bytes(1)); // one byte more: dropped
    channel.receive(big()); // dropped
    assert.equal(env.volunteer.stats().dropped, 2);
    env.sockets[0].accept();
    assert.equal(env.sockets[0].sent.length, 4);
    assert.equal(env.volunteer.stats().bytesToEgress, MiB);
    channel.receive(bytes(1)); // the queue drained: room again
    assert.equal(env.sockets[0].sent.length, 5);
    env.volunteer.stop();
  });

  test("tail-drop: a sink with more than 1 MiB buffered drops, and counts", async () => {
    const env = await makeEnv(BrowserVolunteer);
    const { channel, socket } = await connectedClient(env);
    socket.bufferedAmount = MiB + 1;
    channel.receive(bytes(1));
    channel.receive(bytes(2));
    assert.deepEqual(socket.sent, []);
    channel.bufferedAmount = MiB + 1;
    socket.receive(bytes(3));
    assert.deepEqual(channel.sent, []);
    assert.equal(env.volunteer.stats().dropped, 3);
    socket.bufferedAmount = MiB; // at the bound, not above: sends
    channel.bufferedAmount = 0;
    channel.receive(bytes(4));
    socket.receive(bytes(5));
    assert.equal(socket.sent.length, 1);
    assert.equal(channel.sent.length, 1);
    assert.equal(env.volunteer.stats().dropped, 3);
    env.volunteer.stop();
  });

  test("text messages are not relayed", async () => {
    const env = await makeEnv(BrowserVolunteer);
    const { channel, socket } = await connectedClient(env);
    channel.receive("hello");
    socket.receive("hello");
    assert.deepEqual(socket.sent, []);
    assert.deepEqual(channel.sent, []);
    assert.equal(env.volunteer.stats().dropped, 2);
    env.volunteer.stop();
  });

  test("maxRate: one bucket for both directions delays, then tail-drops", async () => {
    // 100 kB/s; the default burst is 64 KiB.
    const env = await makeEnv(BrowserVolunteer, { maxRate: 100_000 });
    const { channel, socket } = await connectedClient(env);
    const { clock, volunteer } = env;
    const chunk = () => new Uint8Array(16384).buffer;
    for (let i = 0; i < 4; i += 1) channel.receive(chunk()); // the burst: through at once
    assert.equal(socket.sent.length, 4);
    socket.receive(chunk()); // over: the other direction waits on the same bucket
    assert.equal(channel.sent.length, 0);
    channel.receive(chunk()); // waits too
    assert.equal(socket.sent.length, 4);
    // 16384 bytes of debt at 100 kB/s: 164 ms.
    await clock.advance(163);
    assert.equal(channel.sent.length, 0);
    await clock.advance(1);
    assert.equal(channel.sent.length, 1);
    await clock.advance(400);
    assert.equal(socket.sent.length, 5);
    assert.equal(volunteer.stats().dropped, 0);

    // A flood beyond what the queue holds is tail-dropped, the rest trickles out.
    for (let i = 0; i < 80; i += 1) channel.receive(chunk()); // 1.25 MiB
    assert.ok(volunteer.stats().dropped >= 15, `${volunteer.stats().dropped}`);
    const before = socket.sent.length;
    await clock.advance(1000);
    const perSecond = (socket.sent.length - before) * 16384;
    assert.ok(perSecond <= 100_000 + 16384, `${perSecond} B in a second`);
    assert.ok(perSecond >= 100_000 - 16384, `${perSecond} B in a second`);
    volunteer.stop();
  });
});

describe("BrowserVolunteer: closing", () => {
  test("egress unreachable: error status, the client is closed, polling pauses", async () => {
    const env = await makeEnv(BrowserVolunteer);
    const { broker, clock, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    const { pc } = await deliverOffer(env);
    const channel = pc.announceChannel("open");
    channel.receive(bytes(1));
    broker.one(POLL).respond(200, { version: 1, status: "idle" });
    await clock.advance(0);
    broker.one(POLL); // a poll is out

    env.sockets[0].refuse();
    await clock.advance(0);
    assert.deepEqual(lastStatus(env), { state: "error", kind: "egress-unreachable", clients: 0, retryMs: 1000 });
    assert.equal(statusLine(lastStatus(env), T), "Can't reach the unwall exit server. Retrying in 1 s.");
    assert.equal(pc.closeCalls, 1);
    assert.equal(channel.closeCalls, 1);
    assert.equal(volunteer.stats().clientsNow, 0);
    assert.equal(volunteer.stats().clientsTotal, 1);

    // The poll already out may come back; no new poll until the delay has passed.
    broker.one(POLL).respond(200, { version: 1, status: "idle" });
    await clock.advance(500);
    assert.equal(broker.pending(POLL).length, 0);
    await clock.advance(500);
    assert.equal(broker.pending(POLL).length, 1);
    assert.deepEqual(lastStatus(env), { state: "idle" });

    // A second failure in a row waits longer; a working egress resets that.
    await deliverOffer(env, "again");
    env.pcs[1].announceChannel("open");
    env.sockets[1].refuse();
    await clock.advance(0);
    assert.equal(lastStatus(env).retryMs, 2000);
    await clock.advance(2000);
    await connectedClient(env, "works");
    assert.deepEqual(lastStatus(env), { state: "helping", clients: 1 });
    volunteer.stop();
  });

  test("a WebSocket that cannot even be constructed counts as egress unreachable", async () => {
    class ThrowingWebSocket {
      constructor() {
        throw new DOMException("insecure", "SecurityError");
      }
    }
    const env = await makeEnv(BrowserVolunteer, { WebSocket: ThrowingWebSocket });
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    pc.announceChannel("open");
    assert.equal(lastStatus(env).kind, "egress-unreachable");
    assert.equal(pc.closeCalls, 1);
    env.volunteer.stop();
  });

  const closers = [
    ["the channel closes", ({ channel }) => channel.remoteClose()],
    ["the pc fails", ({ pc }) => pc.setConnectionState("failed")],
    ["the pc closes", ({ pc }) => pc.setConnectionState("closed")],
    ["the egress closes the WebSocket", ({ socket }) => socket.remoteClose()],
  ];
  for (const [name, close] of closers) {
    test(`when ${name}, the other side closes too`, async () => {
      const env = await makeEnv(BrowserVolunteer);
      const client = await connectedClient(env);
      close(client);
      await env.clock.advance(0);
      assert.ok(client.pc.closed, "pc closed");
      assert.equal(client.channel.readyState, "closed");
      assert.equal(client.socket.readyState, 3);
      assert.equal(env.volunteer.stats().clientsNow, 0);
      assert.equal(env.volunteer.stats().clientsTotal, 1);
      assert.deepEqual(lastStatus(env), { state: "idle" });
      assert.ok(!env.statuses.some((s) => s.state === "error"), "a normal close is no error");
      env.volunteer.stop();
    });
  }

  test("stop() closes every pc and WebSocket at once and aborts the poll", async () => {
    const env = await makeEnv(BrowserVolunteer, { capacity: 5 });
    const { broker, clock, volunteer } = env;
    const a = await connectedClient(env, "a");
    const b = await connectedClient(env, "b");
    await deliverOffer(env, "c"); // answered, channel not open yet
    const poll = broker.one(POLL);
    assert.equal(poll.body.clients, 3);
    assert.equal(volunteer.stats().clientsNow, 2);
    assert.equal(volunteer.stats().clientsConnecting, 1);

    volunteer.stop();
    assert.equal(poll.signal.aborted, true);
    assert.equal(poll.aborted, true);
    for (const pc of env.pcs) assert.equal(pc.closeCalls, 1);
    for (const socket of env.sockets) assert.equal(socket.closeCalls, 1);
    assert.equal(a.channel.closeCalls, 1);
    assert.equal(b.channel.closeCalls, 1);
    assert.deepEqual(volunteer.stats().clientsNow, 0);
    assert.deepEqual(lastStatus(env), { state: "off" });
    assert.equal(env.statsEvents.at(-1).clientsNow, 0);

    // Nothing more happens afterwards: no poll, no status change, no timers left behind.
    const statusCount = env.statuses.length;
    await clock.advance(120_000);
    assert.equal(broker.pending().length, 0);
    assert.equal(env.statuses.length, statusCount);
    assert.deepEqual(clock.pendingDelays(), []);

    // And it can start again, with the same id.
    volunteer.start();
    await clock.advance(0);
    assert.equal(broker.one(POLL).body.volunteer_id, "test-volunteer-0001");
    assert.equal(broker.one(POLL).body.clients, 0);
    volunteer.stop();
  });

  test("stop() during a broker backoff cancels the retry", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: null });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(CONFIG_PATH).fail();
    await env.clock.advance(0);
    env.volunteer.stop();
    await env.clock.advance(60_000);
    assert.equal(env.broker.all(CONFIG_PATH).length, 1);
    assert.deepEqual(lastStatus(env), { state: "off" });
  });

  test("stop() while an answer is in flight closes that pc too", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "x", sdp: OFFER_SDP });
    await env.clock.advance(0);
    const answer = env.broker.one(ANSWER);
    env.volunteer.stop();
    assert.equal(answer.aborted, true);
    assert.equal(env.pcs[0].closeCalls, 1);
    await env.clock.advance(0);
    assert.equal(env.volunteer.stats().clientsNow, 0);
  });
});

describe("BrowserVolunteer: several egresses", () => {
  const offerWith = async (env, offerId, relay_url) => {
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: offerId, sdp: OFFER_SDP, relay_url });
    await env.clock.advance(0);
    const answer = env.broker.pending(ANSWER).find((r) => r.body.offer_id === offerId);
    answer.respond(200, { version: 1, status: "ok" });
    await env.clock.advance(0);
    env.pcs[env.pcs.length - 1].announceChannel("open");
    await env.clock.advance(0);
    return env.sockets[env.sockets.length - 1];
  };

  test("a poll answer's relay_url is where that client is relayed; others use the config's", async () => {
    const config = { ...CONFIG, relay_urls: ["wss://second.test/v1/relay"] };
    const warnings = [];
    const env = await makeEnv(BrowserVolunteer, { capacity: 4, config, warn: (line) => warnings.push(line) });
    env.volunteer.start();
    await env.clock.advance(0);
    const relayed = async (id, url) => (await offerWith(env, id, url)).url;
    assert.equal(await relayed("a", "wss://second.test/v1/relay"), "wss://second.test/v1/relay?offer=a");
    assert.equal(await relayed("b", undefined), "ws://egress.test/v1/relay?offer=b");
    // Not a WebSocket URL, or not a URL at all: not answered (relay.test.mjs has the rest).
    for (const [id, url] of [["c", "https://evil.test/"], ["d", "not a url"]]) {
      env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: id, sdp: OFFER_SDP, relay_url: url });
      await env.clock.advance(0);
      assert.equal(env.broker.all(ANSWER).filter((r) => r.body.offer_id === id).length, 0);
    }
    assert.equal(warnings.length, 2);
    env.volunteer.stop();
  });
});

describe("BrowserVolunteer: the media carrier", () => {
  /** A stand-in for media.js's MediaCarrier: what the volunteer asks of it, recorded. */
  function fakeCarrier({ accepts = true } = {}) {
    const made = [];
    const factory = async (pc, offerSdp, onDatagram) => {
      const carrier = {
        pc, offerSdp, onDatagram, sent: [], started: 0, stopped: 0, munged: [],
        munge(sdp) { this.munged.push(sdp); return `${sdp}a=munged\r\n`; },
        answer() { return accepts; },
        start() { this.started += 1; },
        send(data) { this.sent.push(data); return true; },
        stop() { this.stopped += 1; },
      };
      made.push(carrier);
      return carrier;
    };
    return { factory, made };
  }

  test("with video, the datagrams to the client ride the call once it connects", async () => {
    const { factory, made } = fakeCarrier();
    const env = await makeEnv(BrowserVolunteer, { mediaCarrier: factory });
    const { pc, channel, socket } = await connectedClient(env);
    const [carrier] = made;
    assert.equal(carrier.pc, pc);
    // both descriptions went through the carrier (start bitrate), in order: offer, answer
    assert.ok(pc.remoteDescription.sdp.endsWith("a=munged\r\n"));
    assert.equal(carrier.munged.length, 2);
    // before the call is connected: the data channel carries (nothing is lost meanwhile)
    socket.receive(bytes(1));
    assert.equal(channel.sent.length, 1);
    pc.setConnectionState("connected");
    await env.clock.advance(0);
    assert.equal(carrier.started, 1);
    socket.receive(bytes(2, 3));
    assert.equal(channel.sent.length, 1, "no longer on the data channel");
    assert.deepEqual(carrier.sent.map((d) => [...new Uint8Array(d)]), [[2, 3]]);
    // and what the call brings goes to the egress, like the channel's messages
    carrier.onDatagram(bytes(9));
    await env.clock.advance(0);
    assert.deepEqual(socket.sent.map((d) => [...new Uint8Array(d)]), [[9]]);
    assert.equal(env.volunteer.stats().clientsOverMedia, 1);
    env.volunteer.stop();
    assert.equal(carrier.stopped, 1);
    assert.equal(env.volunteer.stats().clientsOverMedia, 0);
  });

  test("empty datagrams from the call are not relayed (a hostile frame of empty entries)", async () => {
    const { factory, made } = fakeCarrier();
    const env = await makeEnv(BrowserVolunteer, { mediaCarrier: factory });
    const { pc, socket } = await connectedClient(env);
    pc.setConnectionState("connected");
    await env.clock.advance(0);
    for (let i = 0; i < 1000; i += 1) made[0].onDatagram(new ArrayBuffer(0));
    made[0].onDatagram(bytes(7));
    await env.clock.advance(0);
    assert.deepEqual(socket.sent.map((d) => [...new Uint8Array(d)]), [[7]]);
    env.volunteer.stop();
  });

  test("a carrier that cannot take the offer's video leaves the data channel", async () => {
    const { factory, made } = fakeCarrier({ accepts: false });
    const env = await makeEnv(BrowserVolunteer, { mediaCarrier: factory });
    const { pc, channel, socket } = await connectedClient(env);
    assert.equal(made[0].stopped, 1);
    pc.setConnectionState("connected");
    await env.clock.advance(0);
    socket.receive(bytes(4));
    assert.equal(channel.sent.length, 1);
    assert.equal(made[0].sent.length, 0);
    env.volunteer.stop();
  });

  test("a factory that fails or gives none: the data channel, as before", async () => {
    for (const factory of [async () => null, async () => { throw new Error("no worker"); }]) {
      const env = await makeEnv(BrowserVolunteer, { mediaCarrier: factory });
      const { pc, channel, socket } = await connectedClient(env);
      assert.ok(!pc.remoteDescription.sdp.includes("munged"));
      pc.setConnectionState("connected");
      await env.clock.advance(0);
      socket.receive(bytes(5));
      assert.equal(channel.sent.length, 1);
      env.volunteer.stop();
    }
  });
});
