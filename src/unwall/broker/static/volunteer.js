// The browser volunteer: answers clients' WebRTC offers through the broker and relays each
// client's DataChannel to one WebSocket to the egress, message for message, unchanged.
// A client that offers video (the media carrier, docs/protocol.md §2.1) is answered with
// video back when `mediaCarrier` (a factory, options) gives a carrier for its connection:
// then the datagrams ride in the call's frames both ways, and the data channel only opens.
//
// It never parses what it carries (QUIC, encrypted end to end between client and egress).
// No DOM here: everything it touches (fetch, RTCPeerConnection, WebSocket, timers, clock)
// can be injected, so node tests drive it with fakes. See docs/protocol.md §1–3.

import {
  Backoff,
  ERROR_ANSWER,
  ERROR_BROKER,
  ERROR_CONNECT,
  ERROR_EGRESS,
  ERROR_OFFER,
  ERROR_WEBRTC,
  ERROR_WEBRTC_BLOCKED,
  QUEUE_BYTES,
  iceReach,
  TokenBucket,
  iceServerList,
  checkRelay,
  randomVolunteerId,
  ticketOf,
  stunUrls,
  turnServers,
} from "./logic.js";

/** How long to wait for ICE gathering before sending the answer with what there is. */
export const ICE_GATHER_TIMEOUT_MS = 5000;
/** How long a client has, from its offer, to open its DataChannel. */
export const CHANNEL_OPEN_TIMEOUT_MS = 20000;
/** A broker request that takes longer is given up (the broker holds a poll up to 20 s). */
export const REQUEST_TIMEOUT_MS = 60000;
/** Byte counters are reported at most this often (client counts at once). */
export const STATS_INTERVAL_MS = 500;
/** The self-check's WebSocket to the egress must open within this. */
export const CHECK_TIMEOUT_MS = 10000;

const EGRESS = "egress";
const CLIENT = "client";

class VolunteerEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

class BrokerTrouble extends Error {}

function sizeOf(data) {
  if (data == null) return 0;
  if (typeof data === "string") return data.length;
  if (typeof data.byteLength === "number") return data.byteLength;
  if (typeof data.size === "number") return data.size;
  return 0;
}

function pick(options, name, fallback) {
  // An explicit `undefined` counts: tests use it to take a feature away.
  return Object.prototype.hasOwnProperty.call(options, name) ? options[name] : fallback;
}

function safely(fn) {
  try {
    fn();
  } catch {
    // closing something already closed, or gone: nothing to do
  }
}

export class BrowserVolunteer extends EventTarget {
  constructor(options = {}) {
    super();
    const g = globalThis;
    this.brokerUrl = String(options.brokerUrl ?? "").replace(/\/+$/, "");
    this.capacity = Math.max(1, Math.floor(Number(options.capacity ?? 4)) || 4);
    this.maxRate = Number(options.maxRate) > 0 ? Number(options.maxRate) : null;
    this.volunteerId = options.volunteerId ?? randomVolunteerId(options.crypto ?? g.crypto);
    // Before the first poll: can it reach the egress, and can anyone reach it (ICE)?
    this.selfCheck = options.selfCheck ?? true;

    // Platform functions are called through wrappers so that the browser's own are never
    // called with a `this` they reject.
    const fetchFn = pick(options, "fetch", g.fetch);
    this._fetch = (url, init) => (options.fetch ? fetchFn(url, init) : g.fetch(url, init));
    this._RTCPeerConnection = pick(options, "RTCPeerConnection", g.RTCPeerConnection);
    // async (pc, offerSdp, onDatagram) => a MediaCarrier (media.js) for this connection, or
    // null: the data channel. None given: the data channel always.
    this._mediaCarrier = options.mediaCarrier ?? null;
    this._WebSocket = pick(options, "WebSocket", g.WebSocket);
    // One line for a relay URL refused (never its path or query: they hold the offer's id
    // and ticket).
    const warn = options.warn;
    this._warn = warn ? (line) => warn(line) : (line) => g.console?.warn?.(line);
    const st = options.setTimeout;
    const ct = options.clearTimeout;
    this._setTimeout = st ? (f, ms) => st(f, ms) : (f, ms) => g.setTimeout(f, ms);
    this._clearTimeout = ct ? (id) => ct(id) : (id) => g.clearTimeout(id);
    const now = options.now;
    this._now = now ? () => now() : () => g.performance?.now?.() ?? Date.now();

    this._brokerBackoff = new Backoff({ random: options.random ?? Math.random });
    this._egressBackoff = new Backoff({ random: options.random ?? Math.random });
    this._bucket = this.maxRate ? new TokenBucket(this.maxRate) : null;

    this._gen = 0;
    this._running = false;
    this._config = null;
    // The newest TURN servers with credentials the broker gave, in its poll answers (an older
    // broker also put some in its config).
    // Never logged, shown or put in an event: they are the broker's to hand out.
    this._turn = [];
    this._error = null;
    this._egressHoldUntil = 0;
    this._egressErrorTimer = null;
    this._statsTimer = null;
    this._quiet = false;
    this._clients = new Set();
    this._sleeps = new Set();
    this._controllers = new Set();
    this._capacityWaiters = [];
    this._nextClientId = 1;
    this._stats = {
      clientsNow: 0, clientsTotal: 0, clientsOverMedia: 0, bytesToEgress: 0, bytesToClients: 0, dropped: 0,
    };
    this.status = { state: "off" };
    this._checking = false;
    this._probes = new Set();
    // What the self-check found: "ok", "hard" (few clients can reach us), or null (none yet).
    this.reach = null;
  }

  /**
   * Counters since this object was made. clientsNow: people helped now (their DataChannel
   * is open); clientsConnecting: offers taken whose channel is not open yet; clientsTotal:
   * people whose channel opened, ever.
   */
  stats() {
    return { ...this._stats, clientsConnecting: this._clients.size - this._stats.clientsNow };
  }

  get running() {
    return this._running;
  }

  /** Start answering offers. Does nothing if already started. */
  start() {
    if (this._running) return;
    this._gen += 1;
    const gen = this._gen;
    this._error = null;
    this._config = null;
    this._turn = [];
    this._egressHoldUntil = 0;
    this._brokerBackoff.reset();
    this._egressBackoff.reset();
    if (typeof this._RTCPeerConnection !== "function" || typeof this._WebSocket !== "function") {
      // Nothing to try again later: say so and stay stopped.
      this._error = { kind: ERROR_WEBRTC };
      this._updateStatus();
      return;
    }
    this._running = true;
    this._updateStatus();
    this._run(gen).catch(() => {
      // A bug, not a network failure: stop cleanly rather than spin.
      if (gen === this._gen) this.stop();
    });
  }

  /** Stop at once: abort the poll, close every peer connection and WebSocket. */
  stop() {
    this._gen += 1;
    this._running = false;
    this._quiet = true;
    try {
      for (const controller of this._controllers) controller.abort();
      this._controllers.clear();
      for (const end of [...this._probes]) end(false);
      for (const sleep of this._sleeps) {
        this._clearTimeout(sleep.timer);
        sleep.resolve();
      }
      this._sleeps.clear();
      this._wakeCapacityWaiters();
      if (this._egressErrorTimer !== null) this._clearTimeout(this._egressErrorTimer);
      this._egressErrorTimer = null;
      for (const client of [...this._clients]) this._closeClient(client);
    } finally {
      this._quiet = false;
    }
    this._error = null;
    this._config = null;
    this._turn = [];
    this._updateStatus();
    this._emitStats(true);
  }

  // ----- status and stats -------------------------------------------------------------

  _computeStatus() {
    const clients = this._stats.clientsNow;
    if (this._error && (this._running || this._error.kind === ERROR_WEBRTC)) {
      const s = { state: "error", kind: this._error.kind, clients };
      if (this._error.retryMs !== undefined) s.retryMs = this._error.retryMs;
      return s;
    }
    if (!this._running) return { state: "off" };
    if (!this._config) return { state: "starting" };
    if (this._checking) return { state: "checking" };
    if (clients > 0) return { state: "helping", clients };
    return this.reach === "hard" ? { state: "idle", reach: "hard" } : { state: "idle" };
  }

  _updateStatus() {
    if (this._quiet) return;
    const next = this._computeStatus();
    if (JSON.stringify(next) === JSON.stringify(this.status)) return;
    this.status = next;
    this.dispatchEvent(new VolunteerEvent("status", { ...next }));
  }

  _setError(kind, retryMs) {
    this._error = retryMs === undefined ? { kind } : { kind, retryMs };
    this._updateStatus();
  }

  _clearError(kind) {
    if (this._error && this._error.kind === kind) {
      this._error = null;
      this._updateStatus();
    }
  }

  _emitStats(immediately = false) {
    if (this._quiet) return;
    if (immediately) {
      if (this._statsTimer !== null) this._clearTimeout(this._statsTimer);
      this._statsTimer = null;
      this.dispatchEvent(new VolunteerEvent("stats", this.stats()));
      return;
    }
    if (this._statsTimer !== null) return;
    this._statsTimer = this._setTimeout(() => {
      this._statsTimer = null;
      this.dispatchEvent(new VolunteerEvent("stats", this.stats()));
    }, STATS_INTERVAL_MS);
  }

  // ----- waiting ----------------------------------------------------------------------

  _sleep(ms) {
    return new Promise((resolve) => {
      const sleep = { resolve, timer: null };
      sleep.timer = this._setTimeout(() => {
        this._sleeps.delete(sleep);
        resolve();
      }, ms);
      this._sleeps.add(sleep);
    });
  }

  _capacityFreed() {
    return new Promise((resolve) => this._capacityWaiters.push(resolve));
  }

  _wakeCapacityWaiters() {
    const waiters = this._capacityWaiters;
    this._capacityWaiters = [];
    for (const wake of waiters) wake();
  }

  // ----- the broker -------------------------------------------------------------------

  async _request(method, path, body) {
    const controller = new AbortController();
    this._controllers.add(controller);
    const timer = this._setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const init = { method, signal: controller.signal, cache: "no-store", credentials: "omit" };
      if (body !== undefined) {
        init.headers = { "Content-Type": "application/json" };
        init.body = JSON.stringify(body);
      }
      const response = await this._fetch(`${this.brokerUrl}${path}`, init);
      let json = null;
      try {
        json = await response.json();
      } catch {
        json = null;
      }
      return { status: response.status, json };
    } finally {
      this._clearTimeout(timer);
      this._controllers.delete(controller);
    }
  }

  async _getConfig() {
    const { status, json } = await this._request("GET", "/v1/volunteer/config");
    if (status !== 200 || !json || typeof json !== "object") {
      throw new BrokerTrouble(`config: HTTP ${status}`);
    }
    if (json.version !== 1 || typeof json.egress_url !== "string") {
      throw new BrokerTrouble("config: not a version 1 volunteer config");
    }
    let egress;
    try {
      egress = new URL(json.egress_url);
    } catch {
      egress = new URL(json.egress_url, this.brokerUrl);
    }
    if (egress.protocol === "http:") egress.protocol = "ws:";
    if (egress.protocol === "https:") egress.protocol = "wss:";
    // The broker's own egress obeys the rules any relay does (logic.js, checkRelay); the
    // relays its poll answers may name are this one's origin and those of `relay_urls`.
    const own = checkRelay(egress.href, { broker: this.brokerUrl });
    if (own.refused) {
      this._warn(`unwall: the broker's egress ${own.where} is refused: ${own.refused}`);
      throw new BrokerTrouble(`config: egress refused: ${own.refused}`);
    }
    const relays = new Set([new URL(own.url).origin]);
    for (const other of Array.isArray(json.relay_urls) ? json.relay_urls.slice(0, 64) : []) {
      const checked = checkRelay(other, { broker: this.brokerUrl });
      if (checked.url) relays.add(new URL(checked.url).origin);
    }
    return {
      egressUrl: own.url, relays, stunUrls: stunUrls(json.ice_servers), turn: turnServers(json.turn),
    };
  }

  /**
   * Where a poll answer's client is relayed: its relay_url if the rules and the config
   * allow it, null for none given (the config's egress), or undefined for refused: that
   * offer is not answered, and one line says why.
   */
  _relayOf(reply) {
    if (reply.relay_url === undefined || reply.relay_url === null) return null;
    const checked = checkRelay(reply.relay_url, { broker: this.brokerUrl, allowed: this._config.relays });
    if (checked.url) return checked.url;
    this._warn(`unwall: not answering an offer: the broker named the relay ${checked.where}, refused (${checked.refused})`);
    return undefined;
  }

  /**
   * Take the TURN servers of a broker answer, if it has any usable: they are the newest. The
   * first poll answer brings the first ones (the config, which any page may fetch, has
   * none): a network the self-check found hard to reach is reachable through them.
   */
  _takeTurn(json) {
    const turn = turnServers(json.turn);
    if (turn.length === 0) return;
    this._turn = turn;
    if (this.reach === "hard") {
      this.reach = "ok";
      this._updateStatus();
    }
  }

  async _poll() {
    // No `nat`: a browser cannot measure its NAT (no RFC 5780 behaviour discovery in
    // WebRTC), and absent is "unknown". `relay`: every client gets our TURN servers.
    const body = {
      version: 1,
      volunteer_id: this.volunteerId,
      capacity: this.capacity,
      clients: this._clients.size,
      kind: "browser",
    };
    if (this._turn.length > 0) body.relay = true;
    const { status, json } = await this._request("POST", "/v1/volunteer/poll", body);
    if (status !== 200 || !json || typeof json !== "object") {
      throw new BrokerTrouble(`poll: HTTP ${status}`);
    }
    return json;
  }

  async _brokerTrouble() {
    const delay = this._brokerBackoff.next();
    this._setError(ERROR_BROKER, delay);
    await this._sleep(delay);
  }

  async _run(gen) {
    while (gen === this._gen) {
      try {
        this._config = await this._getConfig();
        this._turn = this._config.turn;
        break;
      } catch {
        if (gen !== this._gen) return;
        await this._brokerTrouble();
      }
    }
    if (gen !== this._gen) return;
    this._brokerBackoff.reset();
    this._clearError(ERROR_BROKER);
    this._updateStatus();
    if (this.selfCheck && !(await this._check(gen))) return;

    while (gen === this._gen) {
      if (this._clients.size >= this.capacity) {
        await this._capacityFreed();
        continue;
      }
      const hold = this._egressHoldUntil - this._now();
      if (hold > 0) {
        await this._sleep(hold);
        continue;
      }
      let reply;
      try {
        reply = await this._poll();
      } catch {
        if (gen !== this._gen) return;
        await this._brokerTrouble();
        continue;
      }
      if (gen !== this._gen) return;
      this._brokerBackoff.reset();
      this._clearError(ERROR_BROKER);
      this._takeTurn(reply);
      if (reply.status === "offer" && typeof reply.offer_id === "string" && typeof reply.sdp === "string") {
        const relay = this._relayOf(reply);
        if (relay !== undefined) this._accept(reply.offer_id, reply.sdp, relay, ticketOf(reply.ticket));
      }
    }
  }

  // ----- one client -------------------------------------------------------------------

  _accept(offerId, sdp, egressUrl = null, ticket = null) {
    // Counted against capacity from now on, so that the next poll reports it; counted as
    // helped only once its DataChannel opens. `egressUrl`: the egress the broker names for
    // this client (several egresses), else the one of the broker's config. `ticket`: the
    // broker's word that opens the relay at the egress.
    const client = {
      id: this._nextClientId++,
      offerId,
      egressUrl,
      ticket,
      pc: null,
      channel: null,
      media: null, // the media carrier, when this client's call carries the datagrams
      mediaActive: false,
      ws: null,
      wsOpen: false,
      opened: false,
      closed: false,
      openTimer: null,
      gatherDone: null,
      queues: {
        [EGRESS]: { items: [], bytes: 0, timer: null, paid: false },
        [CLIENT]: { items: [], bytes: 0, timer: null, paid: false },
      },
    };
    this._clients.add(client);
    this._emitStats(true);
    this._serve(client, sdp).catch(() => this._closeClient(client, ERROR_ANSWER));
  }

  /**
   * A peer connection with the operator's STUN servers and the newest TURN credentials. A
   * browser that refuses the configuration (it throws on a URL it does not take) still
   * gets a connection: without TURN, then without any server, rather than none at all.
   */
  _newPeerConnection() {
    const stun = this._config.stunUrls;
    const attempts = [iceServerList(stun, this._turn)];
    if (this._turn.length > 0) attempts.push(iceServerList(stun, []));
    if (stun.length > 0) attempts.push([]);
    let failure;
    for (const iceServers of attempts) {
      try {
        return new this._RTCPeerConnection({ iceServers });
      } catch (error) {
        failure = error;
      }
    }
    throw failure;
  }

  async _serve(client, sdp) {
    client.openTimer = this._setTimeout(() => {
      client.openTimer = null;
      if (!client.opened) this._closeClient(client, ERROR_CONNECT);
    }, CHANNEL_OPEN_TIMEOUT_MS);

    let pc;
    let answer;
    try {
      pc = this._newPeerConnection();
      client.pc = pc;
      pc.ondatachannel = (event) => this._onDataChannel(client, event.channel);
      // Failing before the channel opened: this person was never helped (say so). After:
      // the connection ended, as connections do.
      const lost = (state) => {
        if (state === "failed" || state === "closed") {
          this._closeClient(client, client.opened || state === "closed" ? undefined : ERROR_CONNECT);
        }
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") this._mediaConnected(client);
        lost(pc.connectionState);
      };
      pc.oniceconnectionstatechange = () => lost(pc.iceConnectionState);

      let media = null;
      if (this._mediaCarrier) {
        try {
          media = await this._mediaCarrier(pc, sdp, (data) => this._fromClient(client, data));
        } catch {
          media = null; // no video here: the data channel carries
        }
      }
      if (client.closed) {
        if (media) safely(() => media.stop());
        return;
      }
      client.media = media;
      await pc.setRemoteDescription({ type: "offer", sdp: media ? media.munge(sdp) : sdp });
      if (client.closed) return;
      if (media && !media.answer()) {
        safely(() => media.stop());
        client.media = media = null;
      }
      answer = await pc.createAnswer();
      if (client.closed) return;
      if (media) answer = { type: "answer", sdp: media.munge(answer.sdp) };
      await pc.setLocalDescription(answer);
    } catch {
      this._closeClient(client, ERROR_OFFER);
      return;
    }
    if (client.closed) return;
    await this._gathered(client);
    if (client.closed) return;

    const local = pc.localDescription?.sdp ?? answer.sdp;
    const { status } = await this._request("POST", "/v1/volunteer/answer", {
      version: 1,
      volunteer_id: this.volunteerId,
      offer_id: client.offerId,
      sdp: local,
    });
    // 404: the client gave up before our answer reached it; nothing is wrong here. Anything
    // else but 200: the broker could not pass it on. Either way this client is gone.
    if (status === 404) this._closeClient(client);
    else if (status !== 200) this._closeClient(client, ERROR_ANSWER);
  }

  _gathered(client) {
    const pc = client.pc;
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") {
        resolve();
        return;
      }
      let finished = false;
      let timer = null;
      const done = () => {
        if (finished) return;
        finished = true;
        if (timer !== null) this._clearTimeout(timer);
        pc.onicegatheringstatechange = null;
        pc.onicecandidate = null;
        client.gatherDone = null;
        resolve();
      };
      client.gatherDone = done;
      pc.onicegatheringstatechange = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      pc.onicecandidate = (event) => {
        if (!event || !event.candidate) done();
      };
      timer = this._setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    });
  }

  _onDataChannel(client, channel) {
    if (client.closed || client.channel) {
      // One channel per client; anything more is not ours to carry.
      safely(() => channel.close());
      return;
    }
    client.channel = channel;
    channel.binaryType = "arraybuffer";
    // Listen at once: the client sends as soon as the channel opens, before the WebSocket
    // to the egress is up; those messages wait in the bounded queue.
    channel.onmessage = (event) => this._fromClient(client, event.data);
    channel.onopen = () => this._channelOpen(client);
    channel.onclose = () => this._closeClient(client);
    if (channel.readyState === "open") this._channelOpen(client);
  }

  /** The call is up: with the media carrier, the datagrams to the client go in its frames. */
  _mediaConnected(client) {
    if (client.closed || !client.media || client.mediaActive) return;
    client.mediaActive = true;
    this._stats.clientsOverMedia += 1;
    Promise.resolve(client.media.start()).catch(() => {});
    // The call carries: this person is helped, whether or not their data channel opens.
    this._channelOpen(client);
    this._pump(client, CLIENT);
  }

  _fromClient(client, data) {
    if (client.closed) return;
    if (typeof data === "string" || sizeOf(data) === 0) {
      // The protocol carries binary messages only; the egress would close on text.
      this._stats.dropped += 1;
      this._emitStats();
      return;
    }
    this._enqueue(client, EGRESS, data);
  }

  _channelOpen(client) {
    if (client.opened || client.closed) return;
    client.opened = true;
    if (client.openTimer !== null) this._clearTimeout(client.openTimer);
    client.openTimer = null;
    this._stats.clientsNow += 1;
    this._stats.clientsTotal += 1;
    // Someone is being helped: an earlier failure to connect no longer describes things.
    for (const kind of [ERROR_OFFER, ERROR_ANSWER, ERROR_CONNECT]) this._clearError(kind);
    this._emitStats(true);
    this._updateStatus();

    let ws;
    try {
      // The offer's id tells the egress whose relay carried the session (its reports let
      // the broker trust this volunteer with more people).
      const relay = new URL(client.egressUrl ?? this._config.egressUrl);
      relay.searchParams.set("offer", client.offerId);
      if (client.ticket) relay.searchParams.set("ticket", client.ticket);
      ws = new this._WebSocket(relay.href);
    } catch {
      this._egressFailed(client);
      return;
    }
    client.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (client.closed) return;
      client.wsOpen = true;
      this._egressBackoff.reset();
      this._egressHoldUntil = 0;
      this._clearError(ERROR_EGRESS);
      this._pump(client, EGRESS);
    };
    ws.onmessage = (event) => {
      if (client.closed) return;
      if (typeof event.data === "string") {
        this._stats.dropped += 1;
        this._emitStats();
        return;
      }
      this._enqueue(client, CLIENT, event.data);
    };
    ws.onerror = () => {
      if (!client.wsOpen) this._egressFailed(client);
    };
    ws.onclose = () => {
      if (!client.wsOpen) this._egressFailed(client);
      else this._closeClient(client);
    };
  }

  // ----- the self-check ----------------------------------------------------------------

  /**
   * Before the first poll: the egress takes a WebSocket (retried with backoff until it
   * does), and a throwaway peer connection gathers ICE candidates: none at all is WebRTC
   * blocked (no poll then: nobody could be helped); no server-reflexive one although a
   * STUN server was given, or a NAT that maps each destination apart, is "hard" to reach.
   * Returns whether to go on polling.
   */
  async _check(gen) {
    this._checking = true;
    this._updateStatus();
    try {
      while (gen === this._gen) {
        if (await this._egressAnswers()) break;
        if (gen !== this._gen) return false;
        const delay = this._egressBackoff.next();
        this._setError(ERROR_EGRESS, delay);
        await this._sleep(delay);
      }
      if (gen !== this._gen) return false;
      this._egressBackoff.reset();
      this._clearError(ERROR_EGRESS);
      const sdp = await this._gatherOnce();
      if (gen !== this._gen) return false;
      this.reach = iceReach(sdp, this._config.stunUrls.length, this._turn.length > 0);
      if (this.reach === "blocked") {
        this._error = { kind: ERROR_WEBRTC_BLOCKED };
        return false;
      }
      return true;
    } finally {
      this._checking = false;
      this._updateStatus();
    }
  }

  _egressAnswers() {
    return new Promise((resolve) => {
      let ws;
      let timer = null;
      const done = (ok) => {
        if (timer !== null) this._clearTimeout(timer);
        timer = null;
        this._probes.delete(done);
        if (ws) {
          ws.onopen = ws.onerror = ws.onclose = null;
          safely(() => ws.close());
        }
        resolve(ok);
      };
      try {
        ws = new this._WebSocket(this._config.egressUrl);
      } catch {
        resolve(false);
        return;
      }
      this._probes.add(done); // stop() ends it at once
      timer = this._setTimeout(() => done(false), CHECK_TIMEOUT_MS);
      ws.onopen = () => done(true);
      ws.onerror = () => done(false);
      ws.onclose = () => done(false);
    });
  }

  async _gatherOnce() {
    let pc;
    try {
      pc = this._newPeerConnection();
      pc.createDataChannel("unwall-check");
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await this._gathered({ pc });
      return pc.localDescription?.sdp ?? "";
    } catch {
      return "";
    } finally {
      if (pc) safely(() => pc.close());
    }
  }

  _egressFailed(client) {
    if (client.closed) return;
    const delay = this._egressBackoff.next();
    // Take no new client until then: the broker gives them to other volunteers.
    this._egressHoldUntil = this._now() + delay;
    if (this._egressErrorTimer !== null) this._clearTimeout(this._egressErrorTimer);
    this._egressErrorTimer = this._setTimeout(() => {
      this._egressErrorTimer = null;
      this._clearError(ERROR_EGRESS);
    }, delay);
    this._setError(ERROR_EGRESS, delay);
    this._closeClient(client);
  }

  // ----- relaying ---------------------------------------------------------------------

  _sink(client, direction) {
    if (direction === EGRESS) return client.wsOpen ? client.ws : null;
    if (client.mediaActive) {
      // The carrier keeps its own bounded queue, paced by the call's congestion control.
      const media = client.media;
      return { bufferedAmount: 0, send: (data) => media.send(data) };
    }
    const channel = client.channel;
    return channel && channel.readyState === "open" ? channel : null;
  }

  _drop() {
    this._stats.dropped += 1;
    this._emitStats();
  }

  _enqueue(client, direction, data) {
    const queue = client.queues[direction];
    const n = sizeOf(data);
    if (queue.bytes + n > QUEUE_BYTES) {
      this._drop(); // tail-drop: QUIC retransmits
      return;
    }
    queue.items.push(data);
    queue.bytes += n;
    this._pump(client, direction);
  }

  _pump(client, direction) {
    const queue = client.queues[direction];
    if (queue.timer !== null || client.closed) return;
    const sink = this._sink(client, direction);
    if (!sink) return;
    while (queue.items.length > 0) {
      const data = queue.items[0];
      const n = sizeOf(data);
      if (!queue.paid) {
        if (sink.bufferedAmount > QUEUE_BYTES) {
          queue.items.shift();
          queue.bytes -= n;
          this._drop();
          continue;
        }
        if (this._bucket) {
          queue.paid = true;
          const delay = this._bucket.take(n, this._now());
          if (delay > 0) {
            queue.timer = this._setTimeout(() => {
              queue.timer = null;
              this._pump(client, direction);
            }, Math.ceil(delay));
            return;
          }
        }
      }
      queue.items.shift();
      queue.bytes -= n;
      queue.paid = false;
      if (sink.bufferedAmount > QUEUE_BYTES) {
        this._drop();
        continue;
      }
      try {
        sink.send(data);
      } catch {
        this._closeClient(client);
        return;
      }
      if (direction === EGRESS) this._stats.bytesToEgress += n;
      else this._stats.bytesToClients += n;
      this._emitStats();
    }
  }

  /** Close everything of one client; `failure`, an error kind, says why it never opened. */
  _closeClient(client, failure = undefined) {
    if (client.closed) return;
    client.closed = true;
    if (client.openTimer !== null) this._clearTimeout(client.openTimer);
    client.openTimer = null;
    if (client.gatherDone) client.gatherDone();
    for (const queue of Object.values(client.queues)) {
      if (queue.timer !== null) this._clearTimeout(queue.timer);
      queue.timer = null;
      queue.items = [];
      queue.bytes = 0;
    }
    if (client.media) safely(() => client.media.stop());
    if (client.mediaActive) this._stats.clientsOverMedia -= 1;
    if (client.channel) safely(() => client.channel.close());
    if (client.ws) safely(() => client.ws.close());
    if (client.pc) safely(() => client.pc.close());
    this._clients.delete(client);
    if (client.opened) this._stats.clientsNow -= 1;
    this._wakeCapacityWaiters();
    this._emitStats(true);
    // stop() closes quietly; a failure of a volunteer that is still on is worth saying.
    if (failure !== undefined && this._running && !this._quiet) this._setError(failure);
    else this._updateStatus();
  }
}
