// Fakes for driving BrowserVolunteer in node: a manual clock, a scripted broker (fetch),
// and RTCPeerConnection / RTCDataChannel / WebSocket stand-ins that tests operate by hand.

import { readFileSync } from "node:fs";

import { translator } from "../src/unwall/broker/static/i18n.js";

/** The catalogues, read from disk (the widget fetches them), and English's translator. */
export function catalogue(lang) {
  return JSON.parse(readFileSync(new URL(`../src/unwall/broker/static/i18n/${lang}.json`, import.meta.url)));
}
export const EN = catalogue("en");
export const T = translator(EN, "en");

/** Let every pending promise chain run. */
export async function flush(rounds = 10) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 0) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, Number(ms) || 0), fn, id });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Move the clock forward by `ms`, firing due timers in order and settling promises. */
  async advance(ms = 0) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      let due = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (due === null || timer.at < due.at || (timer.at === due.at && timer.id < due.id))) {
          due = timer;
        }
      }
      if (due === null) break;
      this.timers.delete(due.id);
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.t = end;
    await flush();
  }

  /** Delays (ms from now) of pending timers, soonest first. */
  pendingDelays() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

export const CONFIG = {
  version: 1,
  egress_url: "ws://egress.test/v1/relay",
  ice_servers: ["stun:stun.test:3478"],
};

/** A broker behind a fake fetch: requests wait until the test answers them. */
export class FakeBroker {
  constructor() {
    this.requests = [];
    this.auto = new Map();
    this.fetch = (url, init = {}) =>
      new Promise((resolve, reject) => {
        const request = {
          url,
          path: new URL(url).pathname,
          method: init.method ?? "GET",
          headers: init.headers ?? {},
          body: init.body === undefined ? undefined : JSON.parse(init.body),
          signal: init.signal,
          settled: false,
          aborted: false,
        };
        request.respond = (status, json) => {
          if (request.settled) return;
          request.settled = true;
          resolve({
            status,
            ok: status >= 200 && status < 300,
            json: async () => {
              if (json === undefined) throw new SyntaxError("Unexpected end of JSON input");
              return json;
            },
          });
        };
        request.fail = (error = new TypeError("Failed to fetch")) => {
          if (request.settled) return;
          request.settled = true;
          reject(error);
        };
        if (init.signal) {
          const onAbort = () => {
            request.aborted = true;
            request.fail(new DOMException("The operation was aborted.", "AbortError"));
          };
          if (init.signal.aborted) onAbort();
          else init.signal.addEventListener("abort", onAbort, { once: true });
        }
        this.requests.push(request);
        const handler = this.auto.get(request.path);
        if (handler) queueMicrotask(() => handler(request));
      });
  }

  /** Answer every future request to `path` with `handler(request)`. */
  on(path, handler) {
    this.auto.set(path, handler);
    return this;
  }

  off(path) {
    this.auto.delete(path);
    return this;
  }

  all(path) {
    return this.requests.filter((r) => r.path === path);
  }

  pending(path) {
    return this.requests.filter((r) => !r.settled && (path === undefined || r.path === path));
  }

  /** The one unanswered request to `path` (fails the test if not exactly one). */
  one(path) {
    const pending = this.pending(path);
    if (pending.length !== 1) {
      throw new Error(`expected one pending ${path}, found ${pending.length}`);
    }
    return pending[0];
  }
}

export class FakeDataChannel {
  constructor(label = "unwall", readyState = "open") {
    this.label = label;
    this.readyState = readyState;
    this.binaryType = "blob";
    this.bufferedAmount = 0;
    this.sent = [];
    this.closeCalls = 0;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
  }

  /** The channel opens (for one announced while still connecting). */
  open() {
    this.readyState = "open";
    this.onopen?.({ type: "open" });
  }

  /** A message from the client. */
  receive(data) {
    this.onmessage?.({ type: "message", data });
  }

  send(data) {
    if (this.readyState !== "open") throw new DOMException("not open", "InvalidStateError");
    this.sent.push(data);
  }

  close() {
    this.closeCalls += 1;
    if (this.readyState === "closed") return;
    this.readyState = "closed";
    queueMicrotask(() => this.onclose?.({ type: "close" }));
  }

  /** The client closes its end. */
  remoteClose() {
    this.readyState = "closed";
    this.onclose?.({ type: "close" });
  }
}

/**
 * A RTCPeerConnection class and the list of its instances. `gather`: "auto" completes ICE
 * gathering right after setLocalDescription (adding a candidate to the SDP), "manual" waits
 * for the test to call finishGathering(), "never" never completes.
 */
export function makeRTC({ gather = "auto" } = {}) {
  const instances = [];
  class FakeRTCPeerConnection {
    constructor(config) {
      this.config = config;
      this.iceGatheringState = "new";
      this.connectionState = "new";
      this.iceConnectionState = "new";
      this.localDescription = null;
      this.remoteDescription = null;
      this.closeCalls = 0;
      this.closed = false;
      this.ondatachannel = null;
      this.onconnectionstatechange = null;
      this.oniceconnectionstatechange = null;
      this.onicegatheringstatechange = null;
      this.onicecandidate = null;
      instances.push(this);
    }

    async setRemoteDescription(description) {
      if (this.closed) throw new DOMException("closed", "InvalidStateError");
      if (typeof description.sdp !== "string" || !description.sdp.startsWith("v=0")) {
        throw new DOMException("bad sdp", "OperationError");
      }
      this.remoteDescription = { ...description };
    }

    createDataChannel(label) {
      if (this.closed) throw new DOMException("closed", "InvalidStateError");
      this.channels = [...(this.channels ?? []), label];
      return new FakeDataChannel(label, "connecting");
    }

    async createOffer() {
      if (this.closed) throw new DOMException("closed", "InvalidStateError");
      return { type: "offer", sdp: "v=0\r\noffer-without-candidates\r\n" };
    }

    async createAnswer() {
      if (this.closed) throw new DOMException("closed", "InvalidStateError");
      if (instances.failCreateAnswer) throw new DOMException("no answer", "OperationError");
      return { type: "answer", sdp: "v=0\r\nanswer-without-candidates\r\n" };
    }

    async setLocalDescription(description) {
      if (this.closed) throw new DOMException("closed", "InvalidStateError");
      this.localDescription = { type: description.type, sdp: description.sdp };
      this.iceGatheringState = "gathering";
      if (gather === "auto") queueMicrotask(() => this.finishGathering());
    }

    finishGathering(sdp = "v=0\r\nanswer-without-candidates\r\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\n") {
      this.localDescription = { type: "answer", sdp };
      this.iceGatheringState = "complete";
      this.onicegatheringstatechange?.({ type: "icegatheringstatechange" });
    }

    /** The client's DataChannel arrives (open by default, as browsers announce it). */
    announceChannel(readyState = "open", label = "unwall") {
      const channel = new FakeDataChannel(label, readyState);
      this.ondatachannel?.({ type: "datachannel", channel });
      return channel;
    }

    setConnectionState(state) {
      this.connectionState = state;
      this.onconnectionstatechange?.({ type: "connectionstatechange" });
    }

    setIceConnectionState(state) {
      this.iceConnectionState = state;
      this.oniceconnectionstatechange?.({ type: "iceconnectionstatechange" });
    }

    close() {
      this.closeCalls += 1;
      this.closed = true;
      this.connectionState = "closed";
    }
  }
  return { RTCPeerConnection: FakeRTCPeerConnection, pcs: instances };
}

export function makeWebSocket() {
  const instances = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.binaryType = "blob";
      this.bufferedAmount = 0;
      this.sent = [];
      this.closeCalls = 0;
      this.onopen = null;
      this.onmessage = null;
      this.onerror = null;
      this.onclose = null;
      instances.push(this);
    }

    /** The egress accepts the connection. */
    accept() {
      this.readyState = 1;
      this.onopen?.({ type: "open" });
    }

    /** The connection fails before it opened (egress down). */
    refuse() {
      this.readyState = 3;
      this.onerror?.({ type: "error" });
      this.onclose?.({ type: "close", code: 1006, wasClean: false });
    }

    /** A message from the egress. */
    receive(data) {
      this.onmessage?.({ type: "message", data });
    }

    send(data) {
      if (this.readyState !== 1) throw new DOMException("not open", "InvalidStateError");
      this.sent.push(data);
    }

    close() {
      this.closeCalls += 1;
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ type: "close", code: 1000, wasClean: true }));
    }

    /** The egress closes the connection. */
    remoteClose(code = 1000) {
      this.readyState = 3;
      this.onclose?.({ type: "close", code, wasClean: true });
    }
  }
  return { WebSocket: FakeWebSocket, sockets: instances };
}

/**
 * A BrowserVolunteer wired to fakes. The broker answers the config request by itself
 * (unless `config: null`); polls and answers wait for the test.
 */
export async function makeEnv(BrowserVolunteer, options = {}) {
  const { gather = "auto", config = CONFIG, ...volunteerOptions } = options;
  const clock = new FakeClock(1_000_000);
  const broker = new FakeBroker();
  if (config) broker.on("/v1/volunteer/config", (r) => r.respond(200, config));
  const rtc = makeRTC({ gather });
  const ws = makeWebSocket();
  const statuses = [];
  const statsEvents = [];
  const volunteer = new BrowserVolunteer({
    brokerUrl: "http://broker.test/",
    fetch: broker.fetch,
    RTCPeerConnection: rtc.RTCPeerConnection,
    WebSocket: ws.WebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    volunteerId: "test-volunteer-0001",
    selfCheck: false, // its own tests (selfcheck.test.mjs) turn it on
    ...volunteerOptions,
  });
  volunteer.addEventListener("status", (e) => statuses.push(e.detail));
  volunteer.addEventListener("stats", (e) => statsEvents.push(e.detail));
  return { clock, broker, pcs: rtc.pcs, sockets: ws.sockets, volunteer, statuses, statsEvents };
}

export const OFFER_SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

/** Hand the pending poll an offer and answer the volunteer's answer with `answerStatus`. */
export async function deliverOffer(env, offerId = "offer-1", { answerStatus = 200 } = {}) {
  env.broker.one("/v1/volunteer/poll").respond(200, { version: 1, status: "offer", offer_id: offerId, sdp: OFFER_SDP });
  await env.clock.advance(0);
  const answer = env.broker.pending("/v1/volunteer/answer").find((r) => r.body.offer_id === offerId);
  if (!answer) throw new Error("no answer posted");
  if (answerStatus === 200) answer.respond(200, { version: 1, status: "ok" });
  else answer.respond(answerStatus, { version: 1, error: "unknown_offer", message: "gone" });
  await env.clock.advance(0);
  return { pc: env.pcs[env.pcs.length - 1], answer };
}

/** Start, deliver one offer, open its channel and its WebSocket. */
export async function connectedClient(env, offerId = "offer-1") {
  if (!env.volunteer.running) {
    env.volunteer.start();
    await env.clock.advance(0);
  }
  const { pc } = await deliverOffer(env, offerId);
  const channel = pc.announceChannel("open");
  const socket = env.sockets[env.sockets.length - 1];
  socket.accept();
  await env.clock.advance(0);
  return { pc, channel, socket };
}

export function bytes(...values) {
  return new Uint8Array(values).buffer;
}
