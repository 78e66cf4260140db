import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { mount, widgets } from "../src/unwall/broker/static/panel.js";
import { defaultBrokerUrl } from "../src/unwall/broker/static/unwall-widget.js";
import { BrowserVolunteer } from "../src/unwall/broker/static/volunteer.js";
import { CONFIG, FakeBroker, FakeClock, OFFER_SDP, T, makeRTC, makeWebSocket } from "./fakes.mjs";
import { FakeDocument, FakeStorage } from "./dom.mjs";

const POLL = "/v1/volunteer/poll";

function setup(storageEntries = {}, attributes = {}) {
  const clock = new FakeClock(5_000_000);
  const broker = new FakeBroker().on("/v1/volunteer/config", (r) => r.respond(200, CONFIG));
  const rtc = makeRTC();
  const ws = makeWebSocket();
  const storage = new FakeStorage(storageEntries);
  const doc = new FakeDocument({ storage, now: clock.now });
  const element = doc.placeholder(attributes);
  const volunteerOptions = {
    fetch: broker.fetch,
    RTCPeerConnection: rtc.RTCPeerConnection,
    WebSocket: ws.WebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    selfCheck: false,
  };
  return { clock, broker, pcs: rtc.pcs, sockets: ws.sockets, storage, doc, element, volunteerOptions };
}

const text = (element, cls) => element.querySelector(`.${cls}`)?.textContent;
const lines = (element) => element.querySelectorAll("li").map((li) => li.textContent);

async function openClient(env, offerId) {
  env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: offerId, sdp: OFFER_SDP });
  await env.clock.advance(0);
  env.broker.one("/v1/volunteer/answer").respond(200, { version: 1, status: "ok" });
  await env.clock.advance(0);
  const channel = env.pcs.at(-1).announceChannel("open");
  const socket = env.sockets.at(-1);
  socket.accept();
  return { channel, socket };
}

describe("widget", () => {
  test("first visit: everything there, switched off", () => {
    const env = setup();
    const widget = mount(env.element, { t: T, volunteerOptions: env.volunteerOptions });
    const { element } = env;
    assert.ok(widgets.includes(widget));
    assert.ok(element.classList.contains("unwall-widget"));
    assert.equal(element.querySelector("h2").textContent, "Help people get past censorship");

    const button = element.querySelector("button");
    assert.equal(button.getAttribute("type"), "button");
    assert.equal(button.getAttribute("role"), "switch");
    assert.equal(button.getAttribute("aria-checked"), "false");
    assert.match(button.textContent, /Be a bridge/);

    const status = element.querySelector("[aria-live]");
    assert.equal(status.getAttribute("aria-live"), "polite");
    assert.equal(status.textContent, "Off");
    assert.deepEqual(lines(element), [
      "People helped now: 0",
      "People helped in total: 0",
      "Data relayed: 0 B",
      "Time on: 0 s",
    ]);
    assert.ok(element.querySelector("polyline"));
    assert.equal(element.getAttribute("data-state"), "off");
    assert.equal(element.getAttribute("data-clients-now"), "0");
    assert.equal(element.getAttribute("data-clients-total"), "0");
    assert.equal(element.getAttribute("data-bytes-relayed"), "0");
    assert.equal(widget.volunteer, null);
    assert.equal("unwallVolunteer" in element, false, "nothing of the volunteer on the element");
    assert.equal(env.broker.requests.length, 0, "off: no network at all");
    assert.equal(env.storage.getItem("unwall.enabled"), null);
    widget.destroy();
  });

  test("the stylesheet is injected once, next to the script", () => {
    const env = setup();
    const second = env.doc.placeholder();
    const a = mount(env.element, { t: T, volunteerOptions: env.volunteerOptions });
    const b = mount(second, { t: T, volunteerOptions: env.volunteerOptions });
    const links = env.doc.querySelectorAll("link[data-unwall-widget-style]");
    assert.equal(links.length, 1);
    assert.equal(links[0].getAttribute("rel"), "stylesheet");
    assert.equal(links[0].getAttribute("href"), new URL("../src/unwall/broker/static/unwall-widget.css", import.meta.url).href);
    assert.equal(mount(env.element), a, "mounting twice gives the same widget");
    a.destroy();
    b.destroy();
  });

  test("switching on and off: persisted, relays, counts, closes everything", async () => {
    const env = setup({}, { "data-broker": "http://elsewhere.test", "data-capacity": "3" });
    const { element, clock, broker } = env;
    const widget = mount(element, { t: T, brokerUrl: "http://broker.test", volunteerOptions: env.volunteerOptions });
    element.querySelector("button").click();
    assert.equal(element.querySelector("button").getAttribute("aria-checked"), "true");
    assert.equal(env.storage.getItem("unwall.enabled"), "1");
    assert.ok(widget.volunteer instanceof BrowserVolunteer);
    assert.equal("unwallVolunteer" in element, false);
    assert.equal(element.getAttribute("data-state"), "starting");
    assert.equal(text(element, "unwall-widget__status"), "Starting…");

    await clock.advance(0);
    assert.equal(element.getAttribute("data-state"), "idle");
    assert.equal(text(element, "unwall-widget__status"), "Ready. No one needs help right now.");
    const poll = broker.one(POLL);
    assert.equal(poll.url, "http://broker.test/v1/volunteer/poll");
    assert.equal(poll.body.capacity, 3);
    assert.equal(poll.body.kind, "browser");

    const { channel, socket } = await openClient(env, "one");
    assert.equal(element.getAttribute("data-state"), "helping");
    assert.equal(text(element, "unwall-widget__status"), "Helping 1 person now");
    assert.equal(element.getAttribute("data-clients-now"), "1");
    assert.equal(element.getAttribute("data-clients-total"), "1");
    assert.equal(env.storage.getItem("unwall.totalHelped"), "1");

    channel.receive(new Uint8Array(1000).buffer);
    socket.receive(new Uint8Array(500).buffer);
    await clock.advance(1000);
    env.doc.tick();
    assert.equal(element.getAttribute("data-bytes-relayed"), "1500");
    assert.deepEqual(lines(element), [
      "People helped now: 1",
      "People helped in total: 1",
      "Data relayed: 1.5 kB",
      "Time on: 1 s",
    ]);
    assert.equal(env.storage.getItem("unwall.msOn"), "1000", "the time on is remembered");
    const points = element.querySelector("polyline").getAttribute("points").split(" ");
    assert.equal(points.length, 60);
    assert.equal(points.at(-1), "120,0", "the latest second is the peak");
    // The last hour, a point a minute: this minute holds what was relayed.
    const hour = element.querySelectorAll("polyline")[1].getAttribute("points").split(" ");
    assert.equal(hour.length, 60);
    assert.equal(hour.at(-1), "120,0");
    assert.equal(element.getAttribute("data-hour-bytes"), "1500");

    const volunteer = widget.volunteer;
    element.querySelector("button").click();
    assert.equal(element.querySelector("button").getAttribute("aria-checked"), "false");
    assert.equal(env.storage.getItem("unwall.enabled"), "0");
    assert.equal(volunteer.running, false);
    assert.equal(env.pcs[0].closeCalls, 1);
    assert.equal(env.sockets[0].closeCalls, 1);
    assert.equal(broker.pending().length, 0, "the poll was aborted");
    assert.equal(element.getAttribute("data-state"), "off");
    assert.equal(element.getAttribute("data-clients-now"), "0");
    assert.equal(element.getAttribute("data-clients-total"), "1");
    assert.equal(text(element, "unwall-widget__status"), "Off");
    assert.equal(env.doc.intervals.size, 0, "no ticking while off");
    widget.destroy();
  });

  test("if it was on, it starts on load; the total carries over", async () => {
    const env = setup({ "unwall.enabled": "1", "unwall.totalHelped": "41" });
    const widget = mount(env.element, { t: T, brokerUrl: "http://broker.test", volunteerOptions: env.volunteerOptions });
    assert.equal(env.element.querySelector("button").getAttribute("aria-checked"), "true");
    assert.ok(widget.volunteer);
    assert.equal(env.element.getAttribute("data-clients-total"), "41");
    await env.clock.advance(0);
    await openClient(env, "x");
    assert.equal(env.element.getAttribute("data-clients-total"), "42");
    assert.equal(env.storage.getItem("unwall.totalHelped"), "42");
    assert.deepEqual(lines(env.element)[1], "People helped in total: 42");
    widget.destroy();
  });

  test("a garbage total shows 0", () => {
    const env = setup({ "unwall.totalHelped": "NaN" });
    const widget = mount(env.element, { t: T, volunteerOptions: env.volunteerOptions });
    assert.equal(lines(env.element)[1], "People helped in total: 0");
    widget.destroy();
  });

  test("errors are shown and styled distinctly", async () => {
    const env = setup({ "unwall.enabled": "1" });
    const widget = mount(env.element, { t: T,
      brokerUrl: "http://broker.test",
      volunteerOptions: { ...env.volunteerOptions, RTCPeerConnection: undefined },
    });
    const status = env.element.querySelector("[aria-live]");
    assert.equal(env.element.getAttribute("data-state"), "error");
    assert.equal(status.textContent, "This browser can't relay: WebRTC is unavailable.");
    assert.ok(status.classList.contains("unwall-widget__status--error"));
    env.element.querySelector("button").click();
    assert.equal(env.element.getAttribute("data-state"), "off");
    assert.ok(!status.classList.contains("unwall-widget__status--error"));
    widget.destroy();
  });

  test("an answered offer whose connection fails: nobody counted, and the reason shown", async () => {
    const env = setup({ "unwall.enabled": "1" });
    const widget = mount(env.element, { t: T, brokerUrl: "http://broker.test", volunteerOptions: env.volunteerOptions });
    await env.clock.advance(0);
    env.broker.one(POLL).respond(200, { version: 1, status: "offer", offer_id: "x", sdp: OFFER_SDP });
    await env.clock.advance(0);
    env.broker.one("/v1/volunteer/answer").respond(200, { version: 1, status: "ok" });
    await env.clock.advance(1000);
    const status = env.element.querySelector("[aria-live]");
    assert.equal(status.textContent, "Ready. No one needs help right now.");
    assert.equal(env.element.getAttribute("data-clients-now"), "0");
    env.pcs[0].setIceConnectionState("failed");
    await env.clock.advance(1000);
    assert.equal(env.element.getAttribute("data-state"), "error");
    assert.equal(
      status.textContent,
      "Couldn't connect to a person who needed help (their network or yours blocks it).",
    );
    assert.ok(status.classList.contains("unwall-widget__status--error"));
    assert.deepEqual(lines(env.element).slice(0, 2), ["People helped now: 0", "People helped in total: 0"]);
    assert.equal(env.storage.getItem("unwall.totalHelped") ?? "0", "0");
    widget.destroy();
  });

  test("data-max-rate reaches the volunteer", () => {
    const env = setup({}, { "data-max-rate": "250000", "data-capacity": "nope" });
    const widget = mount(env.element, { t: T, volunteerOptions: env.volunteerOptions });
    assert.equal(widget.maxRate, 250000);
    assert.equal(widget.capacity, 4);
    widget.setEnabled(true);
    assert.equal(widget.volunteer.maxRate, 250000);
    assert.equal(widget.volunteer.capacity, 4);
    widget.destroy();
    assert.ok(!widgets.includes(widget));
  });
});

describe("defaultBrokerUrl", () => {
  const cases = [
    ["https://broker.example/widget/unwall-widget.js", "https://broker.example"],
    ["https://broker.example:8443/widget/unwall-widget.js?v=3", "https://broker.example:8443"],
    ["https://example.org/unwall/widget/unwall-widget.js", "https://example.org/unwall"],
    ["http://127.0.0.1:8080/unwall-widget.js", "http://127.0.0.1:8080"],
  ];
  for (const [script, broker] of cases) {
    test(`${script} -> ${broker}`, () => assert.equal(defaultBrokerUrl(script), broker));
  }
});

