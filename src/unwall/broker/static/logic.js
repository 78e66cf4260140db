// Pure logic of the unwall volunteer widget: no DOM, no network, importable in node.
//
// Times are milliseconds on whatever clock the caller passes in (Date.now() or
// performance.now()); nothing here reads a clock by itself.

/** Bound of each relay direction's queue, and of the sinks' send buffers (1 MiB). */
export const QUEUE_BYTES = 1 << 20;

/** The kinds of error a volunteer reports in a status `{state: "error", kind}`. */
export const ERROR_BROKER = "broker-unreachable";
export const ERROR_WEBRTC = "webrtc-unavailable";
export const ERROR_EGRESS = "egress-unreachable";
/** This browser could not take a client's offer (setRemoteDescription or createAnswer failed). */
export const ERROR_OFFER = "offer-unusable";
/** WebRTC exists in this browser but finds no way out (no ICE candidate at all). */
export const ERROR_WEBRTC_BLOCKED = "webrtc-blocked";
/** The broker did not take the answer to an offer (an HTTP error, or no answer at all). */
export const ERROR_ANSWER = "answer-undelivered";
/** The answer went out, but the client's DataChannel never opened (ICE or DTLS failed). */
export const ERROR_CONNECT = "connect-failed";

/**
 * A token bucket: `rate` bytes per second on average, bursts up to `burst` bytes.
 *
 * A sender that takes more than is available is let through and then made to wait its
 * debt off, so a big message is never starved by small ones and the average holds (the
 * same rule as the Python volunteer's bucket). The bucket starts full.
 */
export class TokenBucket {
  constructor(rate, burst = undefined, now = undefined) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError("rate must be a positive number");
    this.rate = rate;
    this.burst = burst ?? Math.max(rate / 4, 64 * 1024);
    if (!(this.burst > 0)) throw new RangeError("burst must be a positive number");
    this.tokens = this.burst;
    // The clock starts at the first take() unless the caller gives it.
    this.stamp = now ?? null;
  }

  _refill(now) {
    if (this.stamp === null) this.stamp = now;
    const elapsed = Math.max(0, now - this.stamp);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
    this.stamp = Math.max(this.stamp, now);
  }

  /** Take `n` bytes at time `now` (ms); return how many ms to wait before sending (0: now). */
  take(n, now) {
    this._refill(now);
    this.tokens -= n;
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.rate;
  }
}

/** Retry delays: 1 s doubling up to 30 s, each with ±20% jitter. In milliseconds. */
export class Backoff {
  constructor({ initial = 1000, max = 30000, factor = 2, jitter = 0.2, random = Math.random } = {}) {
    this.initial = initial;
    this.max = max;
    this.factor = factor;
    this.jitter = jitter;
    this.random = random;
    this.reset();
  }

  reset() {
    this.base = this.initial;
  }

  /** The next delay (ms), jittered; the following one doubles, up to `max`. */
  next() {
    const base = Math.min(this.base, this.max);
    this.base = Math.min(base * this.factor, this.max);
    const spread = 1 + this.jitter * (2 * this.random() - 1);
    return Math.round(base * spread);
  }
}

const UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];

/** A byte count for people: SI units, three significant digits ("1.5 kB", "12.3 MB"). */
export function formatBytes(n) {
  let value = Number(n);
  if (!Number.isFinite(value) || value <= 0) return "0 B";
  if (value < 1000) return `${Math.round(value)} B`;
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  let text = value.toPrecision(3);
  // 999.95 kB rounds to "1.00e+3": that is 1 MB.
  if (Number(text) >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
    text = value.toPrecision(3);
  }
  if (text.includes(".")) text = text.replace(/\.?0+$/, "");
  return `${text} ${UNITS[unit]}`;
}

/** After a failure with one client, the others it still carries (" Helping 2 people now."). */
function stillHelping(s, t) {
  const n = Number(s.clients) || 0;
  return n > 0 ? ` ${t("status.helping", { n })}.` : "";
}

function retrySeconds(ms) {
  const s = Math.ceil((Number(ms) || 0) / 1000);
  return Math.max(1, s);
}

const ERROR_KEYS = {
  [ERROR_BROKER]: "error.broker",
  [ERROR_WEBRTC]: "error.webrtc",
  [ERROR_WEBRTC_BLOCKED]: "error.webrtc_blocked",
  [ERROR_EGRESS]: "error.egress",
  [ERROR_OFFER]: "error.offer",
  [ERROR_ANSWER]: "error.answer",
  [ERROR_CONNECT]: "error.connect",
};

/** Errors about one client: the widget goes on helping the others. */
const ONE_CLIENT = new Set([ERROR_OFFER, ERROR_ANSWER, ERROR_CONNECT]);

/**
 * The one-line status shown to the volunteer, in the language of `t` (i18n.js
 * `translator`). `state` is an object as emitted by the volunteer's `status` event
 * (`{state: "helping", clients: 2}`, `{state: "error", kind, retryMs}`, `{state: "idle",
 * reach: "hard"}`), or just the state's name.
 */
export function statusLine(state, t) {
  const s = typeof state === "string" ? { state } : state ?? { state: "off" };
  switch (s.state) {
    case "starting":
      return t("status.starting");
    case "checking":
      return t("status.checking");
    case "idle":
      return t(s.reach === "hard" ? "status.hard_to_reach" : "status.idle");
    case "helping":
      return t("status.helping", { n: Number(s.clients) || 0 });
    case "error": {
      const key = ERROR_KEYS[s.kind];
      if (!key) return t("error.other");
      const text = t(key, { seconds: retrySeconds(s.retryMs) });
      return ONE_CLIENT.has(s.kind) ? text + stillHelping(s, t) : text;
    }
    default:
      return t("status.off");
  }
}

/** A duration for people, in the language of `t`: "42 s", "12 min", "3 h 5 min". */
export function formatDuration(ms, t) {
  const seconds = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  if (seconds < 60) return t("duration.seconds", { n: seconds });
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return t("duration.minutes", { m: minutes, n: minutes });
  return t("duration.hours", { h: Math.floor(minutes / 60), m: minutes % 60, n: minutes % 60 });
}

/**
 * Bytes relayed per second over the last `size` seconds (a ring buffer); with `slotMs`
 * 60000, per minute over the last `size` minutes. `samples(now)` lists them oldest first,
 * ending with the current (partial) slot; slots with no traffic are 0.
 */
export class ThroughputHistory {
  constructor(size = 60, slotMs = 1000) {
    this.size = size;
    this.slotMs = slotMs;
    this.values = new Array(size).fill(0);
    this.seconds = new Array(size).fill(null);
  }

  _slot(second) {
    return ((second % this.size) + this.size) % this.size;
  }

  add(bytes, now) {
    const n = Number(bytes);
    if (!Number.isFinite(n) || n <= 0) return;
    const second = Math.floor(now / this.slotMs);
    const i = this._slot(second);
    if (this.seconds[i] === second) {
      this.values[i] += n;
    } else if (this.seconds[i] === null || this.seconds[i] < second) {
      this.seconds[i] = second;
      this.values[i] = n;
    }
    // else: older than the window; forget it.
  }

  samples(now) {
    const current = Math.floor(now / this.slotMs);
    const out = [];
    for (let second = current - this.size + 1; second <= current; second += 1) {
      const i = this._slot(second);
      out.push(this.seconds[i] === second ? this.values[i] : 0);
    }
    return out;
  }
}

function num(x) {
  // Two decimals at most, no trailing zeros, never "-0".
  const r = Math.round(x * 100) / 100;
  return String(r === 0 ? 0 : r);
}

/**
 * The `points` attribute of an SVG polyline drawing `samples` across a `width` × `height`
 * box: the largest sample touches the top, zero lies on the bottom edge. Empty input gives
 * "", a single sample a flat line across the width.
 */
export function sparklinePoints(samples, width, height) {
  const values = Array.from(samples ?? [], (v) => (Number.isFinite(Number(v)) && v > 0 ? Number(v) : 0));
  if (values.length === 0) return "";
  const max = Math.max(...values);
  const y = (v) => (max > 0 ? height - (v / max) * height : height);
  if (values.length === 1) {
    const y0 = num(y(values[0]));
    return `0,${y0} ${num(width)},${y0}`;
  }
  const step = width / (values.length - 1);
  return values.map((v, i) => `${num(i * step)},${num(y(v))}`).join(" ");
}

export const ENABLED_KEY = "unwall.enabled";
export const TOTAL_HELPED_KEY = "unwall.totalHelped";
export const TIME_ON_KEY = "unwall.msOn";

/**
 * The widget's remembered state in a Storage-like object (localStorage). Storage may be
 * missing or throw (private modes, sandboxed frames): then it lives in memory only.
 */
export class PersistedState {
  constructor(storage) {
    this.storage = storage ?? null;
    this.memory = new Map();
  }

  _get(key) {
    if (this.storage) {
      try {
        return this.storage.getItem(key);
      } catch {
        // fall through to memory
      }
    }
    return this.memory.has(key) ? this.memory.get(key) : null;
  }

  _set(key, value) {
    this.memory.set(key, value);
    if (this.storage) {
      try {
        this.storage.setItem(key, value);
      } catch {
        // quota or access denied: memory only
      }
    }
  }

  /** Whether the switch is on; off on a first visit. */
  get enabled() {
    return this._get(ENABLED_KEY) === "1";
  }

  set enabled(on) {
    this._set(ENABLED_KEY, on ? "1" : "0");
  }

  /** How many people this browser has helped, ever; anything unreadable counts as 0. */
  get totalHelped() {
    const raw = this._get(TOTAL_HELPED_KEY);
    if (typeof raw !== "string" || !/^\d{1,15}$/.test(raw.trim())) return 0;
    return Number(raw.trim());
  }

  set totalHelped(n) {
    const v = Math.max(0, Math.floor(Number(n) || 0));
    this._set(TOTAL_HELPED_KEY, String(v));
  }

  /** Add `n` (default 1) people to the total; returns the new total. */
  addHelped(n = 1) {
    const total = this.totalHelped + n;
    this.totalHelped = total;
    return this.totalHelped;
  }

  /** How long (ms) the switch has been on in this browser, over every visit. */
  get msOn() {
    const raw = this._get(TIME_ON_KEY);
    if (typeof raw !== "string" || !/^\d{1,15}$/.test(raw.trim())) return 0;
    return Number(raw.trim());
  }

  addTimeOn(ms) {
    const add = Math.max(0, Math.floor(Number(ms) || 0));
    if (add > 0) this._set(TIME_ON_KEY, String(this.msOn + add));
    return this.msOn;
  }
}

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** A random volunteer id: 22 characters of [A-Za-z0-9_-] (132 bits). */
export function randomVolunteerId(crypto = globalThis.crypto) {
  const bytes = new Uint8Array(22);
  crypto.getRandomValues(bytes);
  // 256 is a multiple of 64, so the low six bits are uniform.
  return Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
}

// ----- ICE servers ------------------------------------------------------------------------

/** Bounds on the broker's `turn` list (docs/protocol.md §1); more is ignored. */
export const TURN_MAX_SERVERS = 4;
export const TURN_MAX_URLS = 8;
export const TURN_MAX_CHARS = 512;

const STUN_URL = /^stuns?:[^\s?#/]+/i;
const TURN_URL = /^turns?:[^\s#/]+/i;

function boundedString(value) {
  return typeof value === "string" && value.length > 0 && value.length <= TURN_MAX_CHARS;
}

/**
 * The operator's `ice_servers` a browser can use without credentials: `stun:`/`stuns:`
 * URL strings. A `turn:` URL without a username makes the RTCPeerConnection constructor
 * throw (and so would anything that is not an ICE URL), which would fail every offer: those
 * are left out. TURN reaches the widget with credentials, in `turn` (see turnServers).
 */
export function stunUrls(iceServers) {
  if (!Array.isArray(iceServers)) return [];
  return iceServers.filter((u) => boundedString(u) && STUN_URL.test(u));
}

/**
 * The broker's `turn` entries ({urls, username, credential}) a browser can use, as fresh
 * plain objects: `turn:`/`turns:` URLs only (a string or a list), a non-empty username and
 * credential; anything else is dropped, entry by entry, URL by URL. [] when there are none.
 */
export function turnServers(turn) {
  if (!Array.isArray(turn)) return [];
  const out = [];
  for (const entry of turn) {
    if (out.length >= TURN_MAX_SERVERS) break;
    if (!entry || typeof entry !== "object" || Array.isArray(entry)) continue;
    const { username, credential } = entry;
    if (!boundedString(username) || !boundedString(credential)) continue;
    const given = typeof entry.urls === "string" ? [entry.urls] : entry.urls;
    if (!Array.isArray(given)) continue;
    const urls = given.filter((u) => boundedString(u) && TURN_URL.test(u)).slice(0, TURN_MAX_URLS);
    if (urls.length === 0) continue;
    out.push({ urls, username, credential });
  }
  return out;
}

/**
 * What a gathered SDP says about who can reach this browser: "blocked" (no candidate at
 * all), "hard" (a STUN server was given but no server-reflexive candidate came, so UDP is
 * likely blocked; or two of them from one local socket with different ports, a NAT that
 * maps each destination apart), else "ok". A TURN server lets anyone in: "ok" whenever a
 * candidate came.
 */
export function iceReach(sdp, stunServers = 0, turn = false) {
  const candidates = String(sdp ?? "")
    .split(/\r?\n/)
    .filter((line) => line.startsWith("a=candidate:"))
    .map((line) => line.split(" "));
  if (candidates.length === 0) return "blocked";
  if (turn) return "ok";
  const reflexive = candidates.filter((c) => c[7] === "srflx");
  if (stunServers > 0 && reflexive.length === 0) return "hard";
  const ports = new Map(); // local socket -> mapped ports seen
  for (const c of reflexive) {
    const at = (name) => c[c.indexOf(name) + 1];
    const local = `${at("raddr")}:${at("rport")}`;
    if (!ports.has(local)) ports.set(local, new Set());
    ports.get(local).add(c[5]);
  }
  for (const seen of ports.values()) if (seen.size > 1) return "hard";
  return "ok";
}

/** The broker's ticket for an offer (base64url, at most 255 characters), or null. */
export function ticketOf(value) {
  return typeof value === "string" && /^[A-Za-z0-9_-]{1,255}$/.test(value) ? value : null;
}

/** Every relay's path (docs/protocol.md §3): no other path on an allowed host is opened. */
export const RELAY_PATH = "/v1/relay";

function ipv4Kind([a, b, c]) {
  if (a === 0 || a === 127) return "loopback"; // 0.0.0.0/8 reaches this machine too
  if (a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168)) return "private";
  if (a === 100 && b >= 64 && b <= 127) return "private"; // carrier-grade NAT
  if (a === 169 && b === 254) return "link-local"; // cloud metadata lives here
  if (a >= 224 || (a === 192 && b === 0 && c === 0)) return "reserved";
  return "public"; // documentation ranges (TEST-NET) included: nobody's LAN is there
}

function ipv6Groups(text) {
  // The URL parser's form: lower case, hex only, at most one "::".
  const [head, tail] = text.includes("::") ? text.split("::") : [text, null];
  const part = (s) => (s ? s.split(":").map((g) => parseInt(g, 16)) : []);
  const left = part(head);
  const right = part(tail);
  if (tail === null) return left.length === 8 ? left : null;
  return [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
}

function ipv6Kind(g) {
  const zero = (from, to) => g.slice(from, to).every((x) => x === 0);
  const v4 = (hi, lo) => ipv4Kind([hi >> 8, hi & 255, lo >> 8, lo & 255]);
  if (zero(0, 7) && (g[7] === 0 || g[7] === 1)) return "loopback"; // ::1, and ::
  if (zero(0, 5) && g[5] === 0xffff) return v4(g[6], g[7]); // IPv4-mapped
  if (zero(0, 6)) return v4(g[6], g[7]); // IPv4-compatible
  if (g[0] === 0x64 && g[1] === 0xff9b && zero(2, 6)) return v4(g[6], g[7]); // NAT64
  if (g[0] === 0x2002) return v4(g[1], g[2]); // 6to4
  if ((g[0] & 0xfe00) === 0xfc00 || (g[0] & 0xffc0) === 0xfec0) return "private";
  if ((g[0] & 0xffc0) === 0xfe80) return "link-local";
  if ((g[0] & 0xe000) !== 0x2000) return "reserved"; // outside global unicast, multicast too
  return "public";
}

/**
 * The kind of network a URL's host (`URL.hostname`) is on, as far as a browser can tell:
 * it cannot resolve names, so it goes by IP literals and names that are local by their
 * form. "loopback" (127/8, 0/8, ::1, ::, localhost, *.localhost), "link-local" (169.254/16,
 * fe80::/10), "private" (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7, *.local,
 * *.home.arpa, *.internal, *.lan, a name of one label), "reserved" (multicast, 240/4, ...)
 * or "public" (everything else). IPv4 inside IPv6 (mapped, NAT64, 6to4) counts as its IPv4.
 */
export function hostKind(hostname) {
  const host = String(hostname ?? "").toLowerCase().replace(/\.$/, "");
  if (host.startsWith("[") && host.endsWith("]")) {
    const groups = ipv6Groups(host.slice(1, -1));
    return groups && groups.every((x) => x >= 0 && x <= 0xffff) ? ipv6Kind(groups) : "reserved";
  }
  const quad = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (quad) return ipv4Kind(quad.slice(1).map(Number));
  if (host === "localhost" || host.endsWith(".localhost")) return "loopback";
  if (!host.includes(".") || /\.(local|lan|internal|home\.arpa)$/.test(host)) return "private";
  return "public";
}

function parsed(text) {
  try {
    return new URL(text);
  } catch {
    return null;
  }
}

/**
 * Whether a browser volunteer may open a relay WebSocket to `value`, a URL its broker
 * (at `broker`) gave: the config's egress_url, or a poll answer's relay_url (then only on
 * an origin in `allowed`, the config's egress and relay_urls). Returns {url} (no fragment)
 * or {refused: why, where: the URL's origin, never its path or query}.
 *
 * The rules hold whatever the broker says: path exactly /v1/relay, no user or password,
 * wss:// (ws:// only from a broker on http://), and no loopback, private or link-local
 * host unless the broker itself is on that kind of address (the local demo, a LAN): a
 * public broker never sends a volunteer into its LAN, its loopback or cloud metadata.
 */
export function checkRelay(value, { broker, allowed = null } = {}) {
  const url = typeof value === "string" && value.length <= 2048 ? parsed(value) : null;
  if (!url || (url.protocol !== "ws:" && url.protocol !== "wss:")) {
    return { refused: "not a ws:// or wss:// URL", where: "a URL" };
  }
  const where = url.origin;
  const from = parsed(String(broker ?? "")) ?? { protocol: "", hostname: "" };
  const kind = hostKind(url.hostname);
  const brokerKind = hostKind(from.hostname);
  let refused = null;
  if (url.pathname !== RELAY_PATH) refused = `its path is not ${RELAY_PATH}`;
  else if (url.username || url.password) refused = "it carries a user name or password";
  else if (url.protocol === "ws:" && from.protocol !== "http:") refused = "plain ws:// from a broker on https://";
  else if (kind === "reserved") refused = "a reserved address";
  else if (kind !== "public" && kind !== brokerKind) refused = `a ${kind} address, from a ${brokerKind} broker`;
  else if (allowed && !allowed.has(url.origin)) refused = "not one of the broker's relays";
  if (refused) return { refused, where };
  url.hash = "";
  return { url: url.href };
}

/**
 * RTCConfiguration.iceServers from the operator's STUN URLs and TURN servers with
 * credentials (both already cleaned by stunUrls and turnServers). No servers is an empty
 * list: a server with an empty `urls` is an error in browsers.
 */
export function iceServerList(stun, turn) {
  const servers = stun.length ? [{ urls: [...stun] }] : [];
  for (const server of turn) servers.push({ urls: [...server.urls], username: server.username, credential: server.credential });
  return servers;
}

/** The broker a script at `scriptUrl` belongs to: its URL minus "/widget/...". */
export function defaultBrokerUrl(scriptUrl = import.meta.url) {
  const url = new URL(scriptUrl);
  const at = url.pathname.lastIndexOf("/widget/");
  const prefix = at >= 0 ? url.pathname.slice(0, at) : "";
  return `${url.origin}${prefix}`;
}

/** A whole number above zero written as text (an attribute), else null. */
export function positiveInt(text) {
  if (typeof text !== "string" || !/^\s*\d+\s*$/.test(text)) return null;
  const n = Number(text);
  return n > 0 && Number.isSafeInteger(n) ? n : null;
}
