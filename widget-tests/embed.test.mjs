// The embedding side (unwall-widget.js) and the frame's reports (frame.js): the page gets
// a frame of the broker's origin and, back, only what frame.js sends (issue 22, row 6).
import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { FRAME_SANDBOX, embed, frameUrl, readReport } from "../src/unwall/broker/static/unwall-widget.js";
import { MESSAGE_TYPE, applyQuery, frameReport, reportTo } from "../src/unwall/broker/static/frame.js";
import { mount } from "../src/unwall/broker/static/panel.js";
import { BrowserVolunteer } from "../src/unwall/broker/static/volunteer.js";
import { FakeDocument, FakeStorage } from "./dom.mjs";
import { CONFIG, FakeBroker, FakeClock, OFFER_SDP, T, makeRTC, makeWebSocket } from "./fakes.mjs";

const SCRIPT = "https://broker.example/widget/unwall-widget.js";
const BROKER = "https://broker.example";

const report = (fields = {}) => ({
  type: MESSAGE_TYPE,
  version: 1,
  enabled: true,
  state: "helping",
  clientsNow: 2,
  clientsTotal: 7,
  bytesRelayed: 12345,
  carrier: "media",
  height: 231,
  title: "Help people get past censorship",
  ...fields,
});

describe("the frame's URL", () => {
  test("the broker's frame, the options as its query", () => {
    const doc = new FakeDocument();
    const element = doc.placeholder({ "data-lang": "fa", "data-capacity": "3", "data-max-rate": "250000" });
    assert.equal(
      frameUrl(element, SCRIPT).href,
      `${BROKER}/widget/frame.html?lang=fa&capacity=3&max-rate=250000`,
    );
  });

  test("data-broker, with a path; junk options left out", () => {
    const doc = new FakeDocument();
    const element = doc.placeholder({ "data-broker": "https://example.org/unwall/", "data-capacity": "-1", "data-max-rate": "x" });
    assert.equal(frameUrl(element, SCRIPT).href, "https://example.org/unwall/widget/frame.html");
  });

  test("a broker that is not http(s) gets no frame", () => {
    const doc = new FakeDocument();
    for (const broker of ["javascript:alert(1)", "data:text/html,hi", "file:///etc"]) {
      const element = doc.placeholder({ "data-broker": broker });
      assert.equal(frameUrl(element, SCRIPT), null, broker);
      assert.equal(embed(element, { scriptUrl: SCRIPT }), null, broker);
      assert.equal(element.childNodes.length, 0);
    }
  });
});

describe("embedding", () => {
  function setup(attributes = {}) {
    const doc = new FakeDocument();
    const element = doc.placeholder(attributes);
    const iframe = embed(element, { scriptUrl: SCRIPT });
    const win = doc.defaultView;
    const post = (data, { origin = BROKER, source = iframe.contentWindow } = {}) =>
      win.dispatch("message", { data, origin, source });
    return { doc, element, iframe, post };
  }

  test("one frame of the broker's origin, sandboxed to its own origin's scripts", () => {
    const { element, iframe } = setup({ "data-lang": "ru" });
    assert.deepEqual(element.children, [iframe]);
    assert.equal(iframe.tagName, "IFRAME");
    assert.equal(iframe.src, `${BROKER}/widget/frame.html?lang=ru`);
    assert.equal(iframe.getAttribute("sandbox"), FRAME_SANDBOX);
    assert.equal(FRAME_SANDBOX, "allow-scripts allow-same-origin");
    assert.equal(iframe.getAttribute("referrerpolicy"), "no-referrer");
    assert.equal(iframe.style.width, "100%");
    assert.equal(embed(element, { scriptUrl: SCRIPT }), iframe, "embedding twice: the same frame");
  });

  test("nothing of the widget on the element: no volunteer, no switch, no state until the frame says", () => {
    const { element } = setup();
    for (const name of ["unwallVolunteer", "unwallWidget", "volunteer", "setEnabled"]) {
      assert.equal(name in element, false, name);
    }
    assert.equal(element.getAttribute("data-state"), null);
    assert.equal(element.querySelector("button"), null);
  });

  test("the frame's report becomes read-only attributes, its height and title", () => {
    const { element, iframe, post } = setup();
    post(report());
    assert.equal(element.getAttribute("data-state"), "helping");
    assert.equal(element.getAttribute("data-enabled"), "true");
    assert.equal(element.getAttribute("data-clients-now"), "2");
    assert.equal(element.getAttribute("data-clients-total"), "7");
    assert.equal(element.getAttribute("data-bytes-relayed"), "12345");
    assert.equal(element.getAttribute("data-carrier"), "media");
    assert.equal(iframe.style.height, "231px");
    assert.equal(iframe.getAttribute("title"), "Help people get past censorship");
  });

  test("messages from another origin or another window are ignored", () => {
    const { element, iframe, post } = setup();
    post(report(), { origin: "https://evil.example" });
    post(report(), { source: { frameOf: null } });
    post(report(), { source: null });
    post(report(), { origin: "https://broker.example:444" });
    assert.equal(element.getAttribute("data-state"), null);
    assert.equal(iframe.style.height, "260px");
  });

  test("malformed reports are ignored; heights are capped", () => {
    const { element, iframe, post } = setup();
    for (const bad of [
      null,
      "helping",
      report({ type: "other" }),
      report({ state: "<img src=x>" }),
      report({ clientsNow: -1 }),
      report({ bytesRelayed: 1.5 }),
      report({ carrier: "sdp" }),
      report({ enabled: "yes" }),
    ]) {
      post(bad);
      assert.equal(element.getAttribute("data-state"), null, JSON.stringify(bad));
    }
    post(report({ height: 1e9 }));
    assert.equal(iframe.style.height, "2000px");
    assert.equal(readReport(report({ height: "tall" })).height, null);
  });
});

describe("the frame", () => {
  function panel(storageEntries = {}) {
    const clock = new FakeClock(5_000_000);
    // A broker on https:// names a wss:// egress (a widget refuses plain ws:// from it).
    const config = { ...CONFIG, egress_url: "wss://egress.test/v1/relay" };
    const broker = new FakeBroker().on("/v1/volunteer/config", (r) => r.respond(200, config));
    const rtc = makeRTC();
    const ws = makeWebSocket();
    const doc = new FakeDocument({ storage: new FakeStorage(storageEntries), now: clock.now });
    const element = doc.createElement("div");
    doc.body.appendChild(element);
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
    return { clock, broker, pcs: rtc.pcs, sockets: ws.sockets, doc, element, volunteerOptions };
  }

  test("takes lang, capacity and max-rate from its query, nothing else", () => {
    const { element } = panel();
    applyQuery(element, "?lang=fa&capacity=3&max-rate=1000&enabled=1&on=true&broker=https://evil.example");
    assert.equal(element.getAttribute("data-lang"), "fa");
    assert.equal(element.getAttribute("data-capacity"), "3");
    assert.equal(element.getAttribute("data-max-rate"), "1000");
    assert.deepEqual(
      [...element.attributes.keys()].sort(),
      ["data-capacity", "data-lang", "data-max-rate"],
    );
  });

  test("reports only words and counts, even while it relays a client's offer", async () => {
    const env = panel();
    const widget = mount(env.element, { t: T, brokerUrl: BROKER, mediaCarrier: null, volunteerOptions: env.volunteerOptions });
    const sent = [];
    const send = reportTo({ postMessage: (data, target) => sent.push([data, target]) }, env.element, { win: {} });
    assert.deepEqual(sent[0][0], {
      type: MESSAGE_TYPE,
      version: 1,
      enabled: false,
      state: "off",
      clientsNow: 0,
      clientsTotal: 0,
      bytesRelayed: 0,
      carrier: "datachannel",
      height: 0,
      title: "Help people get past censorship",
    });
    assert.equal(sent[0][1], "*");

    env.element.querySelector("button").click();
    assert.ok(widget.volunteer instanceof BrowserVolunteer);
    await env.clock.advance(0);
    env.broker.one("/v1/volunteer/poll").respond(200, { version: 1, status: "offer", offer_id: "o1", sdp: OFFER_SDP });
    await env.clock.advance(0);
    env.broker.one("/v1/volunteer/answer").respond(200, { version: 1, status: "ok" });
    await env.clock.advance(0);
    env.pcs.at(-1).announceChannel("open");
    env.sockets.at(-1).accept();
    send();
    const last = sent.at(-1)[0];
    assert.equal(last.enabled, true);
    assert.equal(last.state, "helping");
    assert.equal(last.clientsNow, 1);
    const everything = JSON.stringify(sent);
    for (const secret of ["v=0", "candidate", "o1", "ice-ufrag", "fingerprint", "127.0.0.1"]) {
      assert.ok(!everything.includes(secret), `${secret} left the frame: ${everything}`);
    }
    assert.deepEqual(Object.keys(last).sort(), Object.keys(frameReport(env.element)).sort());
    widget.destroy();
  });
});
