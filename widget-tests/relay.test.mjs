// Where the widget relays (issue 22, row 5): only to its broker's egress and relays, only at
// /v1/relay, wss:// unless the broker is on http://, and never into loopback, a LAN or
// link-local (cloud metadata) unless the broker itself is on that kind of address.

import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { BrowserVolunteer } from "../src/unwall/broker/static/volunteer.js";
import { checkRelay, hostKind, ticketOf } from "../src/unwall/broker/static/logic.js";
import { CONFIG, OFFER_SDP, makeEnv } from "./fakes.mjs";

const POLL = "/v1/volunteer/poll";
const ANSWER = "/v1/volunteer/answer";
const PUBLIC = "https://broker.example/";

describe("hostKind: what a browser can tell without resolving", () => {
  const kinds = {
    loopback: ["127.0.0.1", "127.1.2.3", "0.0.0.0", "[::1]", "[::]", "[::ffff:7f00:1]", "localhost", "LocalHost.", "app.localhost"],
    private: [
      "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "[fd12::1]", "[fec0::1]",
      "[::ffff:a00:1]", "[64:ff9b::c0a8:101]", "[2002:c0a8:101::1]", "printer.local", "nas.lan", "box.home.arpa",
      "db.internal", "router",
    ],
    "link-local": ["169.254.169.254", "[fe80::1]", "[::ffff:a9fe:a9fe]"],
    reserved: ["224.0.0.1", "255.255.255.255", "240.0.0.1", "[ff02::1]", "[100::1]", "192.0.0.8"],
    public: ["8.8.8.8", "172.32.0.1", "100.128.0.1", "203.0.113.5", "198.51.100.1", "[2606:4700::1111]", "[2001:db8::1]", "egress.example", "local.example"],
  };
  for (const [kind, hosts] of Object.entries(kinds)) {
    test(kind, () => {
      for (const host of hosts) assert.equal(hostKind(host), kind, host);
    });
  }

  test("the URL parser's own forms of an address are what it checks", () => {
    for (const text of ["ws://2130706433/", "ws://0x7f.1/", "ws://0177.0.0.1/", "ws://[::ffff:127.0.0.1]/", "ws://[0:0:0:0:0:0:0:1]/"]) {
      assert.equal(hostKind(new URL(text).hostname), "loopback", text);
    }
  });
});

describe("checkRelay", () => {
  const ok = (value, options) => assert.deepEqual(checkRelay(value, options), { url: new URL(value.split("#")[0]).href }, value);
  const refused = (value, options, why) => {
    const result = checkRelay(value, options);
    assert.equal(result.url, undefined, value);
    assert.match(result.refused, why, value);
    return result;
  };

  test("a public broker: wss:// to public hosts at /v1/relay only", () => {
    const from = { broker: PUBLIC };
    ok("wss://egress.example/v1/relay", from);
    ok("wss://egress.example:8443/v1/relay?v=1#frag", from);
    ok("wss://203.0.113.7/v1/relay", from);
    refused("ws://egress.example/v1/relay", from, /plain ws:\/\//);
    refused("wss://egress.example/internal/admin", from, /path/);
    refused("wss://egress.example/v1/relay/", from, /path/);
    refused("wss://egress.example/v1/relay/../../admin", from, /path/);
    refused("wss://user:pw@egress.example/v1/relay", from, /user name or password/);
    refused("https://egress.example/v1/relay", from, /ws:\/\//);
    refused("not a url", from, /ws:\/\//);
    refused(`wss://egress.example/v1/relay?${"x".repeat(2100)}`, from, /ws:\/\//);
  });

  test("a public broker never sends a volunteer to loopback, a LAN or link-local", () => {
    const from = { broker: PUBLIC };
    for (const url of [
      "wss://127.0.0.1:8080/v1/relay", "wss://[::1]:8080/v1/relay", "wss://localhost/v1/relay", "wss://2130706433/v1/relay",
      "wss://10.0.0.1/v1/relay", "wss://192.168.1.1/v1/relay", "wss://printer.local/v1/relay", "wss://router/v1/relay",
      "wss://169.254.169.254/v1/relay", "wss://[fe80::1]/v1/relay", "wss://[::ffff:a9fe:a9fe]/v1/relay",
      "wss://224.0.0.1/v1/relay",
    ]) {
      refused(url, from, /address/);
    }
  });

  test("a broker on loopback (the demo) may name loopback relays, over ws:// when it is on http://", () => {
    ok("ws://127.0.0.1:7000/v1/relay", { broker: "http://127.0.0.1:8080" });
    ok("ws://localhost:7000/v1/relay", { broker: "http://localhost:8080" });
    ok("wss://egress.example/v1/relay", { broker: "http://127.0.0.1:8080" });
    // but not a LAN's, nor link-local
    refused("ws://192.168.1.1/v1/relay", { broker: "http://127.0.0.1:8080" }, /private address, from a loopback broker/);
    refused("ws://169.254.169.254/v1/relay", { broker: "http://127.0.0.1:8080" }, /link-local/);
    // a LAN broker: LAN relays, not loopback ones
    ok("ws://10.1.2.3:7000/v1/relay", { broker: "http://192.168.1.5:8080" });
    refused("ws://127.0.0.1:7000/v1/relay", { broker: "http://192.168.1.5:8080" }, /loopback address, from a private broker/);
  });

  test("a poll's relay must also be on an origin the config named", () => {
    const options = { broker: PUBLIC, allowed: new Set(["wss://egress.example", "wss://second.example:8443"]) };
    ok("wss://egress.example/v1/relay", options);
    ok("wss://second.example:8443/v1/relay", options);
    refused("wss://second.example/v1/relay", options, /not one of the broker's relays/);
    refused("wss://third.example/v1/relay", options, /not one of the broker's relays/);
  });

  test("says where, never the path or the query", () => {
    const result = checkRelay("ws://10.0.0.1:8080/internal/admin?offer=o1&ticket=SECRET", { broker: PUBLIC });
    assert.equal(result.where, "ws://10.0.0.1:8080");
  });

  test("tickets: base64url of at most 255 characters", () => {
    assert.equal(ticketOf("AbC_-09"), "AbC_-09");
    assert.equal(ticketOf("x".repeat(255)), "x".repeat(255));
    for (const bad of ["", "x".repeat(256), "a b", "a&offer=b", "a/b", 7, null, undefined]) {
      assert.equal(ticketOf(bad), null, String(bad));
    }
  });
});

describe("BrowserVolunteer: relays the broker names", () => {
  async function started(options = {}) {
    const warnings = [];
    const env = await makeEnv(BrowserVolunteer, { capacity: 8, warn: (line) => warnings.push(line), ...options });
    env.volunteer.start();
    await env.clock.advance(0);
    return { ...env, warnings };
  }

  const offer = async (env, offerId, extra) => {
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: offerId, sdp: OFFER_SDP, ...extra });
    await env.clock.advance(0);
  };

  test("a public broker's private, loopback, link-local or off-list relay: no answer, no connection, one line", async () => {
    const config = { ...CONFIG, egress_url: "wss://egress.example/v1/relay", relay_urls: ["wss://second.example/v1/relay"] };
    const env = await started({ brokerUrl: PUBLIC, config });
    const hostile = [
      "wss://127.0.0.1:8080/internal/admin?token=SECRET",
      "wss://10.0.0.1/v1/relay",
      "wss://[::1]:8080/v1/relay",
      "wss://169.254.169.254/v1/relay",
      "wss://localhost/v1/relay",
      "wss://printer.local/v1/relay",
      "ws://second.example/v1/relay",
      "wss://second.example/internal/admin",
      "wss://third.example/v1/relay",
      "https://egress.example/v1/relay",
    ];
    for (const [i, url] of hostile.entries()) await offer(env, `hostile${i}`, { relay_url: url, ticket: "TICKET" });
    assert.equal(env.broker.all(ANSWER).length, 0, "no hostile offer is answered");
    assert.equal(env.pcs.length, 0, "nor even looked at");
    assert.equal(env.sockets.length, 0, "no WebSocket opened");
    assert.equal(env.volunteer.stats().clientsConnecting, 0);
    assert.equal(env.warnings.length, hostile.length);
    for (const line of env.warnings) {
      assert.match(line, /^unwall: not answering an offer: the broker named the relay /);
      for (const secret of ["SECRET", "TICKET", "admin", "hostile", "offer="]) assert.ok(!line.includes(secret), line);
    }
    assert.match(env.warnings[0], /wss:\/\/127\.0\.0\.1:8080, refused \(its path is not \/v1\/relay\)/);
    assert.match(env.warnings[3], /wss:\/\/169\.254\.169\.254, refused \(a link-local address, from a public broker\)/);

    // Its own egress and the listed relay still work, with the broker's ticket.
    for (const [id, url] of [["own", undefined], ["second", "wss://second.example/v1/relay"]]) {
      await offer(env, id, url ? { relay_url: url, ticket: "tkt-1_A" } : { ticket: "tkt-1_A" });
      env.broker.pending(ANSWER).find((r) => r.body.offer_id === id).respond(200, { version: 1, status: "ok" });
      await env.clock.advance(0);
      env.pcs.at(-1).announceChannel("open");
      await env.clock.advance(0);
    }
    assert.deepEqual(env.sockets.map((s) => s.url), [
      "wss://egress.example/v1/relay?offer=own&ticket=tkt-1_A",
      "wss://second.example/v1/relay?offer=second&ticket=tkt-1_A",
    ]);
    env.volunteer.stop();
  });

  test("a broker's own egress that breaks the rules: it does not start relaying at all", async () => {
    const env = await started({ brokerUrl: PUBLIC, config: { ...CONFIG, egress_url: "ws://192.168.1.1/v1/relay" } });
    assert.equal(env.broker.all(POLL).length, 0);
    assert.equal(env.volunteer.status.state, "error");
    assert.match(env.warnings[0], /the broker's egress ws:\/\/192\.168\.1\.1 is refused/);
    env.volunteer.stop();
  });

  test("relay_urls of the config that break the rules are dropped", async () => {
    const config = { ...CONFIG, egress_url: "wss://egress.example/v1/relay", relay_urls: ["wss://10.0.0.1/v1/relay", 7] };
    const env = await started({ brokerUrl: PUBLIC, config });
    await offer(env, "o1", { relay_url: "wss://10.0.0.1/v1/relay" });
    assert.equal(env.broker.all(ANSWER).length, 0);
    assert.match(env.warnings[0], /a private address, from a public broker/);
    env.volunteer.stop();
  });

  test("the local demo: a broker on http://127.0.0.1 names its egress on loopback over ws://", async () => {
    const config = { ...CONFIG, egress_url: "ws://127.0.0.1:7000/v1/relay" };
    const env = await started({ brokerUrl: "http://127.0.0.1:8080/", config });
    await offer(env, "o1", { relay_url: "ws://127.0.0.1:7000/v1/relay" });
    assert.equal(env.broker.all(ANSWER).length, 1);
    assert.deepEqual(env.warnings, []);
    env.volunteer.stop();
  });
});
