import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { BrowserVolunteer } from "../src/unwall/broker/static/volunteer.js";
import { iceReach, statusLine } from "../src/unwall/broker/static/logic.js";
import { T, makeEnv } from "./fakes.mjs";

const POLL = "/v1/volunteer/poll";
const HOST = "a=candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host generation 0";
const SRFLX = (port, rport = 54321) =>
  `a=candidate:2 1 udp 1686052607 203.0.113.7 ${port} typ srflx raddr 192.0.2.10 rport ${rport} generation 0`;
const sdp = (...lines) => ["v=0", ...lines, ""].join("\r\n");

describe("iceReach", () => {
  test("no candidate at all: WebRTC is blocked", () => {
    assert.equal(iceReach(sdp(), 1, false), "blocked");
    assert.equal(iceReach("", 0, true), "blocked");
  });
  test("a STUN server but no reflexive candidate: hard to reach (UDP blocked)", () => {
    assert.equal(iceReach(sdp(HOST), 1, false), "hard");
    assert.equal(iceReach(sdp(HOST), 0, false), "ok", "without STUN nothing could be learned");
    assert.equal(iceReach(sdp(HOST), 1, true), "ok", "TURN lets anyone in");
  });
  test("one socket mapped to two ports: a symmetric NAT", () => {
    assert.equal(iceReach(sdp(HOST, SRFLX(40000)), 1, false), "ok");
    assert.equal(iceReach(sdp(HOST, SRFLX(40000), SRFLX(40001)), 2, false), "hard");
    assert.equal(iceReach(sdp(HOST, SRFLX(40000), SRFLX(40001, 5000)), 2, false), "ok");
  });
});

async function started(options = {}) {
  const env = await makeEnv(BrowserVolunteer, { gather: "manual", selfCheck: true, ...options });
  env.volunteer.start();
  await env.clock.advance(0); // the config
  return env;
}

describe("the widget's self-check", () => {
  test("egress and ICE fine: checking, then ready, then the first poll", async () => {
    const env = await started();
    assert.equal(statusLine(env.volunteer.status, T), "Checking that this browser can help…");
    assert.equal(env.broker.pending(POLL).length, 0, "no poll before the check");
    const probe = env.sockets[0];
    assert.equal(probe.url, "ws://egress.test/v1/relay");
    probe.accept();
    await env.clock.advance(0);
    assert.equal(probe.closeCalls, 1, "the probe is closed at once");
    const pc = env.pcs[0];
    assert.deepEqual(pc.channels, ["unwall-check"]);
    pc.finishGathering(sdp(HOST, SRFLX(40000)));
    await env.clock.advance(0);
    assert.equal(pc.closeCalls, 1);
    assert.equal(env.volunteer.reach, "ok");
    assert.equal(statusLine(env.volunteer.status, T), "Ready. No one needs help right now.");
    assert.equal(env.broker.pending(POLL).length, 1);
    env.volunteer.stop();
  });

  test("an egress that does not answer: said, retried, then ready", async () => {
    const env = await started();
    env.sockets[0].refuse();
    await env.clock.advance(0);
    assert.equal(statusLine(env.volunteer.status, T), "Can't reach the unwall exit server. Retrying in 1 s.");
    assert.equal(env.broker.pending(POLL).length, 0);
    await env.clock.advance(1000);
    env.sockets[1].accept();
    await env.clock.advance(0);
    env.pcs[0].finishGathering(sdp(HOST, SRFLX(40000)));
    await env.clock.advance(0);
    assert.equal(env.volunteer.status.state, "idle");
    assert.equal(env.broker.pending(POLL).length, 1);
    env.volunteer.stop();
  });

  test("no candidate: WebRTC blocked, and no poll", async () => {
    const env = await started();
    env.sockets[0].accept();
    await env.clock.advance(0);
    env.pcs[0].finishGathering(sdp());
    await env.clock.advance(0);
    assert.equal(
      statusLine(env.volunteer.status, T),
      "This browser can't relay: WebRTC is blocked here (no connection path could be found).",
    );
    await env.clock.advance(60_000);
    assert.equal(env.broker.pending(POLL).length, 0);
    env.volunteer.stop();
    assert.equal(env.volunteer.status.state, "off");
  });

  test("no reflexive candidate: ready, but hard to reach", async () => {
    const env = await started();
    env.sockets[0].accept();
    await env.clock.advance(0);
    env.pcs[0].finishGathering(sdp(HOST));
    await env.clock.advance(0);
    assert.deepEqual(env.volunteer.status, { state: "idle", reach: "hard" });
    assert.match(statusLine(env.volunteer.status, T), /^Ready, but few people can reach this browser/);
    assert.equal(env.broker.pending(POLL).length, 1, "it still helps whoever can reach it");
    env.volunteer.stop();
  });

  test("hard to reach, then the first poll answer brings TURN: ready", async () => {
    const env = await started();
    env.sockets[0].accept();
    await env.clock.advance(0);
    env.pcs[0].finishGathering(sdp(HOST));
    await env.clock.advance(0);
    assert.equal(env.volunteer.reach, "hard");
    const turn = [{ urls: ["turn:turn.test:3478"], username: "1700000000:aaaa", credential: "c" }];
    env.broker.one(POLL).respond(200, { version: 1, status: "idle", turn });
    await env.clock.advance(0);
    assert.equal(env.volunteer.reach, "ok");
    assert.deepEqual(env.volunteer.status, { state: "idle" });
    env.volunteer.stop();
  });

  test("switched off during the check: nothing left open", async () => {
    const env = await started();
    env.volunteer.stop();
    assert.equal(env.sockets[0].closeCalls, 1, "the egress probe is closed at once");
    await env.clock.advance(20_000);
    assert.equal(env.broker.pending(POLL).length, 0);
    assert.equal(env.volunteer.status.state, "off");
  });
});
