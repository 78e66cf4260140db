// The widget's ICE configuration: the operator's STUN URLs plus the broker's TURN servers
// with credentials (docs/protocol.md §1), the newest the broker gave.

import { describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  TURN_MAX_CHARS,
  TURN_MAX_SERVERS,
  TURN_MAX_URLS,
  iceServerList,
  stunUrls,
  turnServers,
} from "../src/unwall/broker/static/logic.js";
import { BrowserVolunteer } from "../src/unwall/broker/static/volunteer.js";
import { CONFIG, OFFER_SDP, deliverOffer, makeEnv, makeRTC } from "./fakes.mjs";

const POLL = "/v1/volunteer/poll";
const TURN_A = { urls: ["turn:turn.test:3478"], username: "1700000000:aaaa", credential: "secret-A" };
const TURN_B = { urls: ["turn:turn.test:3478?transport=tcp"], username: "1700000100:bbbb", credential: "secret-B" };

describe("stunUrls", () => {
  test("keeps stun: and stuns: URL strings, in order", () => {
    assert.deepEqual(stunUrls(["stun:a.test:3478", "stuns:b.test:5349", "STUN:c.test"]), [
      "stun:a.test:3478",
      "stuns:b.test:5349",
      "STUN:c.test",
    ]);
  });

  test("drops turn: URLs (no credentials: browsers refuse them) and anything else", () => {
    const given = [
      "turn:t.test:3478",
      "turns:t.test:443",
      "",
      "stun:",
      "http://x.test/",
      " stun:lead.test",
      42,
      null,
      { urls: "stun:obj.test" },
      `stun:${"a".repeat(TURN_MAX_CHARS)}`,
      "stun:kept.test:3478",
    ];
    assert.deepEqual(stunUrls(given), ["stun:kept.test:3478"]);
  });

  test("not a list: none", () => {
    for (const given of [undefined, null, "stun:a.test", { 0: "stun:a.test" }, 7]) {
      assert.deepEqual(stunUrls(given), []);
    }
  });
});

describe("turnServers", () => {
  test("copies well-formed entries; a single URL string becomes a list", () => {
    const given = [TURN_A, { urls: "turns:t.test:443?transport=tcp", username: "u", credential: "c" }];
    const got = turnServers(given);
    assert.deepEqual(got, [TURN_A, { urls: ["turns:t.test:443?transport=tcp"], username: "u", credential: "c" }]);
    assert.notEqual(got[0], TURN_A);
    assert.notEqual(got[0].urls, TURN_A.urls);
  });

  test("only what RTCIceServer needs: other fields are not carried along", () => {
    const [server] = turnServers([{ ...TURN_A, credentialType: "oauth", extra: { a: 1 } }]);
    assert.deepEqual(Object.keys(server).sort(), ["credential", "urls", "username"]);
  });

  test("bad entries are dropped one by one, bad URLs one by one", () => {
    const given = [
      null,
      "turn:t.test:3478",
      [TURN_A],
      { urls: ["turn:t.test"], credential: "c" }, // no username
      { urls: ["turn:t.test"], username: "u" }, // no credential
      { urls: ["turn:t.test"], username: "", credential: "c" },
      { urls: ["turn:t.test"], username: 5, credential: "c" },
      { urls: ["turn:t.test"], username: "u", credential: "x".repeat(TURN_MAX_CHARS + 1) },
      { urls: ["stun:s.test", "http://h.test/", 3, ""], username: "u", credential: "c" }, // no TURN URL
      { urls: {}, username: "u", credential: "c" },
      { username: "u", credential: "c" },
      { urls: ["stun:s.test", "turn:good.test:3478", null], username: "u", credential: "c" },
    ];
    assert.deepEqual(turnServers(given), [{ urls: ["turn:good.test:3478"], username: "u", credential: "c" }]);
  });

  test("bounded: at most 4 servers of at most 8 URLs", () => {
    const urls = Array.from({ length: 12 }, (_, i) => `turn:t${i}.test:3478`);
    const many = Array.from({ length: 6 }, (_, i) => ({ urls, username: `u${i}`, credential: "c" }));
    const got = turnServers(many);
    assert.equal(got.length, TURN_MAX_SERVERS);
    assert.ok(got.every((s) => s.urls.length === TURN_MAX_URLS));
    assert.deepEqual(got[0].urls, urls.slice(0, TURN_MAX_URLS));
  });

  test("absent or not a list: none", () => {
    for (const given of [undefined, null, TURN_A, "turn:t.test", 1, {}]) {
      assert.deepEqual(turnServers(given), []);
    }
  });
});

describe("iceServerList", () => {
  test("no servers at all: an empty list (an empty `urls` is an error in browsers)", () => {
    assert.deepEqual(iceServerList([], []), []);
  });

  test("STUN only: one server with every URL", () => {
    assert.deepEqual(iceServerList(["stun:a.test", "stun:b.test"], []), [{ urls: ["stun:a.test", "stun:b.test"] }]);
  });

  test("TURN only, and STUN with TURN: STUN first, each TURN server with its credentials", () => {
    assert.deepEqual(iceServerList([], [TURN_A]), [TURN_A]);
    assert.deepEqual(iceServerList(["stun:a.test"], [TURN_A, TURN_B]), [{ urls: ["stun:a.test"] }, TURN_A, TURN_B]);
  });
});

describe("BrowserVolunteer: TURN from the broker", () => {
  test("without turn: STUN only, and the poll says nothing of nat or relay", async () => {
    const env = await makeEnv(BrowserVolunteer);
    env.volunteer.start();
    await env.clock.advance(0);
    const body = env.broker.one(POLL).body;
    assert.ok(!("nat" in body) && !("relay" in body), JSON.stringify(body));
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config, { iceServers: [{ urls: ["stun:stun.test:3478"] }] });
    env.volunteer.stop();
  });

  test("TURN only from poll answers: the first answer's servers serve the first offer", async () => {
    // The broker's config, which any page may fetch, carries no credentials.
    const env = await makeEnv(BrowserVolunteer);
    const { broker, clock, pcs, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    assert.ok(!("relay" in broker.one(POLL).body));
    broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o1", sdp: OFFER_SDP, turn: [TURN_A] });
    await clock.advance(0);
    assert.deepEqual(pcs[0].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_A]);
    assert.equal(broker.one(POLL).body.relay, true, "the next poll says it has a relay");
    volunteer.stop();
  });

  test("the config's turn servers, with credentials; the poll reports relay but no nat", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    env.volunteer.start();
    await env.clock.advance(0);
    const body = env.broker.one(POLL).body;
    assert.equal(body.relay, true);
    assert.ok(!("nat" in body));
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config, { iceServers: [{ urls: ["stun:stun.test:3478"] }, TURN_A] });
    env.volunteer.stop();
  });

  test("an offer's own turn servers win over the config's; one without falls back", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    const { broker, clock, pcs, volunteer } = env;
    volunteer.start();
    await clock.advance(0);
    broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o1", sdp: OFFER_SDP, turn: [TURN_B] });
    await clock.advance(0);
    assert.deepEqual(pcs[0].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_B]);
    // Then an offer without turn: the newest there is (B), not the config's (A).
    broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o2", sdp: OFFER_SDP });
    await clock.advance(0);
    assert.deepEqual(pcs[1].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_B]);
    volunteer.stop();
  });

  test("an idle answer's turn servers are the newest too", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "idle", turn: [TURN_B] });
    await env.clock.advance(0);
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_B]);
    env.volunteer.stop();
  });

  test("an offer whose turn is all bad keeps the last good servers", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, {
      version: 1,
      status: "offer",
      offer_id: "o1",
      sdp: OFFER_SDP,
      turn: [{ urls: ["turn:t.test"] }, "garbage", { urls: [], username: "u", credential: "c" }],
    });
    await env.clock.advance(0);
    assert.deepEqual(env.pcs[0].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_A]);
    env.volunteer.stop();
  });

  test("bad config entries are ignored: no turn: URL without credentials reaches the browser", async () => {
    const config = {
      ...CONFIG,
      ice_servers: ["turn:t.test:3478", "stun:ok.test:3478", 9],
      turn: [{ urls: "turn:x.test" }, TURN_A, null],
    };
    const env = await makeEnv(BrowserVolunteer, { config });
    env.volunteer.start();
    await env.clock.advance(0);
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config.iceServers, [{ urls: ["stun:ok.test:3478"] }, TURN_A]);
    env.volunteer.stop();
  });

  test("a browser that refuses the TURN configuration still answers, without TURN", async () => {
    const rtc = makeRTC();
    const tried = [];
    class Picky extends rtc.RTCPeerConnection {
      constructor(config) {
        tried.push(config);
        if (config.iceServers.some((s) => s.username !== undefined)) {
          throw new DOMException("ICE server parse failed", "SyntaxError");
        }
        super(config);
      }
    }
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] }, RTCPeerConnection: Picky });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "o1", sdp: OFFER_SDP });
    await env.clock.advance(0);
    assert.equal(tried.length, 2);
    assert.deepEqual(rtc.pcs[0].config, { iceServers: [{ urls: ["stun:stun.test:3478"] }] });
    assert.ok(env.broker.pending("/v1/volunteer/answer").length === 1);
    assert.ok(!env.statuses.some((s) => s.state === "error"), JSON.stringify(env.statuses));
    env.volunteer.stop();
  });

  test("stop() forgets the credentials; the next start takes the config's again", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    env.volunteer.start();
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "idle", turn: [TURN_B] });
    await env.clock.advance(0);
    env.volunteer.stop();
    env.volunteer.start();
    await env.clock.advance(0);
    await deliverOffer(env);
    assert.deepEqual(env.pcs[0].config.iceServers, [{ urls: ["stun:stun.test:3478"] }, TURN_A]);
    env.volunteer.stop();
  });

  test("credentials never appear in status or stats events, or in the volunteer's status", async () => {
    const env = await makeEnv(BrowserVolunteer, { config: { ...CONFIG, turn: [TURN_A] } });
    env.volunteer.start();
    await env.clock.advance(0);
    const { pc } = await deliverOffer(env);
    pc.announceChannel("open");
    await env.clock.advance(1000);
    const seen = JSON.stringify([env.statuses, env.statsEvents, env.volunteer.status, env.volunteer.stats()]);
    for (const secret of [TURN_A.username, TURN_A.credential]) assert.ok(!seen.includes(secret), seen);
    env.volunteer.stop();
  });
});
