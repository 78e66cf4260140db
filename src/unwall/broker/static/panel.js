// The unwall volunteer widget's panel: the switch, its status and its figures.
//
// It runs only inside the widget's frame (frame.html, served by the broker and so of the
// broker's origin), never in the page that embeds the widget: that page gets a frame
// (unwall-widget.js) and can neither switch it on nor reach the volunteer, its clients'
// offers or their addresses. Consent is a click on the switch in here, remembered in the
// frame's own localStorage (the broker's origin, partitioned per embedding site by
// browsers that partition third-party storage).
//
// mount(element) builds the panel in `element`. Options on the element (frame.js sets
// them from the frame's query): data-capacity (clients at once, default 4), data-max-rate
// (bytes per second over both directions; default: no cap), data-lang (its language: en,
// zh-Hans, zh-Hant, fa, ru, es; default: the first of the browser's languages there is a
// catalogue for, else English). The broker is the one this script came from.
//
// The element keeps data-state (off|starting|idle|helping|error), data-clients-now (people
// whose data channel is open), data-clients-total (people helped in total, as shown),
// data-bytes-relayed (both directions, since the page loaded) and data-carrier current:
// frame.js tells the embedding page these, and nothing else. The volunteer is
// `widget.volunteer`, reachable only from the frame's own realm.

import { BrowserVolunteer } from "./volunteer.js";
import { direction, loadCatalogue, pickLanguage, translator } from "./i18n.js";
import {
  PersistedState,
  ThroughputHistory,
  formatBytes,
  formatDuration,
  sparklinePoints,
  statusLine,
  defaultBrokerUrl,
  positiveInt,
} from "./logic.js";

const SCRIPT_URL = import.meta.url;
const STYLESHEET_URL = new URL("./unwall-widget.css", SCRIPT_URL).href;
// The media carrier, shared with the Chromium engine (the broker serves both files).
const MEDIA_URL = new URL("./carrier/media.js", SCRIPT_URL).href;
const CARRIER_WORKER_URL = new URL("./carrier/carrier-worker.js", SCRIPT_URL).href;

/** Whether this browser can carry the tunnel in video frames (docs/protocol.md §2.1). */
export function canCarryMedia(win = globalThis) {
  return typeof win.RTCRtpScriptTransform === "function" && typeof win.Worker === "function";
}

let workerUrl = null; // a promise of the carrier worker's URL, or of null

/**
 * The carrier worker's URL once a worker started from it has answered, else null: a
 * Content-Security-Policy that forbids it, or a worker that fails to start, would leave a
 * call whose frames never carry. The panel runs in the broker's origin, the worker's own.
 */
function carrierWorker(win) {
  workerUrl ??= new Promise((resolve) => {
    let worker;
    try {
      worker = new win.Worker(CARRIER_WORKER_URL);
    } catch {
      resolve(null);
      return;
    }
    const done = (url) => {
      win.clearTimeout(timer);
      worker.terminate();
      resolve(url);
    };
    const timer = win.setTimeout(() => done(null), 3000);
    worker.onmessage = (event) => {
      if (event.data?.type === "pong") done(CARRIER_WORKER_URL);
    };
    worker.onerror = () => done(null);
    worker.postMessage({ type: "ping" });
  });
  return workerUrl;
}

/**
 * The factory the volunteer asks for a media carrier per client connection. Null (the
 * data channel) when the browser cannot, the worker cannot start, or the client offers no
 * video.
 */
export function mediaCarrierFactory(win = globalThis) {
  if (!canCarryMedia(win)) return null;
  return async (pc, offerSdp, onDatagram) => {
    const media = await import(MEDIA_URL);
    if (!media.sendsVideo(offerSdp)) return null;
    const url = await carrierWorker(win);
    return url ? new media.MediaCarrier(pc, { workerUrl: url, onDatagram }) : null;
  };
}
const SVG_NS = "http://www.w3.org/2000/svg";
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 28;
const TICK_MS = 1000;

/** Every widget mounted in this frame. */
export const widgets = [];

/** English, once loaded: what a widget mounted without a translator speaks. */
/** How long the panel must have been fully visible before its switch takes a click on. */
export const VISIBLE_MS = 800;

/**
 * Whether the switch may be turned on now. A page that frames the widget could hide it
 * under bait or make it transparent and have a visitor click it unawares (clickjacking).
 * Where the browser can tell (IntersectionObserver v2, `trackVisibility`: Chromium), a
 * click turns it on only once the panel has been fully visible (unobscured, opaque,
 * untransformed) for `visibleMs`; where it cannot, every click counts, as before.
 */
export function visibilityGate(
  win,
  element,
  { visibleMs = VISIBLE_MS, now = () => Date.now(), onChange = () => {} } = {},
) {
  const Observer = win.IntersectionObserver;
  const Entry = win.IntersectionObserverEntry;
  if (typeof Observer !== "function" || !Entry || !("isVisible" in Entry.prototype)) {
    onChange(true);
    return { tracked: false, allows: () => true };
  }
  let visibleSince = null;
  let timer = null;
  const observer = new Observer(
    (entries) => {
      for (const entry of entries) {
        if (entry.isVisible && visibleSince === null) {
          visibleSince = now();
          timer = win.setTimeout(() => onChange(true), visibleMs);
        } else if (!entry.isVisible) {
          visibleSince = null;
          if (timer !== null) win.clearTimeout(timer);
          timer = null;
          onChange(false);
        }
      }
    },
    { trackVisibility: true, delay: 100, threshold: [1.0] },
  );
  observer.observe(element);
  return {
    tracked: true,
    allows: () => visibleSince !== null && now() - visibleSince >= visibleMs,
    disconnect: () => observer.disconnect(),
  };
}

let english = {};
const englishLoaded = loadCatalogue("en", { base: SCRIPT_URL }).then((catalogue) => {
  english = catalogue;
  return catalogue;
});

/** The translator for `lang` (English filling in anything its catalogue lacks). */
export async function translatorFor(lang) {
  const fallback = await englishLoaded;
  const catalogue = lang === "en" ? fallback : await loadCatalogue(lang, { base: SCRIPT_URL });
  return translator(catalogue, lang, fallback);
}

/** The language a widget on `element` speaks: its data-lang, else the browser's. */
export function languageOf(element, win = globalThis) {
  const nav = win.navigator ?? {};
  const browser = Array.isArray(nav.languages) && nav.languages.length ? nav.languages : [nav.language];
  return pickLanguage([element.dataset?.lang, ...browser]);
}

/** Mount a widget in its language (loading the catalogue first); see `mount`. */
export async function mountLocalized(element, options = {}) {
  const t = options.t ?? (await translatorFor(languageOf(element)));
  return mount(element, { ...options, t });
}

let idCounter = 0;


function injectStylesheet(doc) {
  if (doc.querySelector("link[data-unwall-widget-style]")) return;
  const link = doc.createElement("link");
  link.rel = "stylesheet";
  link.href = STYLESHEET_URL;
  link.setAttribute("data-unwall-widget-style", "");
  (doc.head ?? doc.documentElement).appendChild(link);
}

function el(doc, tag, className, text) {
  const node = doc.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function localStorageOf(win) {
  try {
    return win?.localStorage ?? null;
  } catch {
    return null; // blocked (sandboxed frame, privacy settings)
  }
}

/**
 * Mount a widget into `element`. Options override the element's data attributes:
 * {brokerUrl, capacity, maxRate, storage, volunteerOptions, createVolunteer, t}; `t` is
 * the translator it speaks (i18n.js; default English, once loaded: mountLocalized waits
 * for its language). Mounting an element twice returns the first widget.
 */
export function mount(element, options = {}) {
  if (element.unwallWidget) return element.unwallWidget;
  const doc = element.ownerDocument;
  const win = doc.defaultView ?? globalThis;
  injectStylesheet(doc);

  const data = element.dataset ?? {};
  // Never from the element: the frame talks to the broker it came from.
  const brokerUrl = options.brokerUrl ?? defaultBrokerUrl();
  const capacity = options.capacity ?? positiveInt(data.capacity) ?? 4;
  const maxRate = options.maxRate ?? positiveInt(data.maxRate) ?? null;
  const state = new PersistedState(options.storage !== undefined ? options.storage : localStorageOf(win));
  const history = new ThroughputHistory(60);
  const hour = new ThroughputHistory(60, 60_000);
  const now = () => win.performance?.now?.() ?? Date.now();
  const t = options.t ?? translator(english, "en");

  // ----- the DOM ---------------------------------------------------------------------
  idCounter += 1;
  const titleId = `unwall-widget-title-${idCounter}`;
  element.classList.add("unwall-widget");
  element.setAttribute("role", "region");
  element.setAttribute("aria-labelledby", titleId);
  element.setAttribute("lang", t.lang);
  element.setAttribute("dir", direction(t.lang));

  const title = el(doc, "h2", "unwall-widget__title", t("widget.title"));
  title.id = titleId;

  const button = el(doc, "button", "unwall-widget__switch");
  button.type = "button";
  button.setAttribute("role", "switch");
  button.setAttribute("aria-checked", "false");
  const track = el(doc, "span", "unwall-widget__track");
  track.setAttribute("aria-hidden", "true");
  track.appendChild(el(doc, "span", "unwall-widget__knob"));
  const label = el(doc, "span", "unwall-widget__label", t("widget.switch"));
  const onOff = el(doc, "span", "unwall-widget__onoff", t("widget.off"));
  onOff.setAttribute("aria-hidden", "true");
  button.append(track, label, onOff);

  const status = el(doc, "p", "unwall-widget__status", statusLine({ state: "off" }, t));
  status.setAttribute("aria-live", "polite");

  const list = el(doc, "ul", "unwall-widget__stats");
  const line = (text, value) => {
    const item = el(doc, "li", "unwall-widget__stat");
    const number = el(doc, "span", "unwall-widget__value", value);
    item.append(doc.createTextNode(text), number);
    list.appendChild(item);
    return number;
  };
  const nowValue = line(t("widget.now"), "0");
  const totalValue = line(t("widget.total"), String(state.totalHelped));
  const bytesValue = line(t("widget.bytes"), formatBytes(0));
  const timeValue = line(t("widget.time_on"), formatDuration(state.msOn, t));

  const chart = (className, labelKey, samples) => {
    const svg = doc.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", className);
    svg.setAttribute("viewBox", `0 -2 ${SPARK_WIDTH} ${SPARK_HEIGHT + 4}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", t(labelKey));
    const title = doc.createElementNS(SVG_NS, "title");
    title.textContent = t(labelKey);
    const polyline = doc.createElementNS(SVG_NS, "polyline");
    polyline.setAttribute("fill", "none");
    polyline.setAttribute("vector-effect", "non-scaling-stroke");
    polyline.setAttribute("points", sparklinePoints(samples, SPARK_WIDTH, SPARK_HEIGHT));
    svg.append(title, polyline);
    return [svg, polyline];
  };
  const [svg, polyline] = chart("unwall-widget__spark", "widget.spark", history.samples(now()));
  const [hourSvg, hourLine] = chart("unwall-widget__spark unwall-widget__hour", "widget.hour", hour.samples(now()));

  // A browser without encoded transforms still helps, over the data channel: say so.
  const media = options.mediaCarrier !== undefined ? options.mediaCarrier : mediaCarrierFactory(win);
  const note = el(doc, "p", "unwall-widget__note", media ? "" : t("widget.no_video"));
  note.hidden = Boolean(media);
  element.setAttribute("data-carrier", media ? "media" : "datachannel");

  // Said when a click did not switch it on because the panel was not (long) visible.
  const unseen = el(doc, "p", "unwall-widget__note", t("widget.not_visible"));
  unseen.hidden = true;

  element.replaceChildren(title, button, status, unseen, note, list, svg, hourSvg);

  // ----- behaviour -------------------------------------------------------------------
  let volunteer = null;
  let credited = 0; // the volunteer's clientsTotal already added to the persisted total
  let lastBytes = 0;
  let ticker = null;
  let onSince = null; // when the time on was last counted, while the switch is on

  const widget = {
    element,
    brokerUrl,
    capacity,
    maxRate,
    get enabled() {
      return button.getAttribute("aria-checked") === "true";
    },
    get volunteer() {
      return volunteer;
    },
    setEnabled,
    destroy,
  };

  function renderStatus(s) {
    status.textContent = statusLine(s, t);
    status.classList.toggle("unwall-widget__status--error", s.state === "error");
    element.setAttribute("data-state", s.state);
  }

  function renderStats(s) {
    if (s.clientsTotal > credited) {
      state.addHelped(s.clientsTotal - credited);
      credited = s.clientsTotal;
    }
    const bytes = s.bytesToEgress + s.bytesToClients;
    const total = state.totalHelped;
    nowValue.textContent = String(s.clientsNow);
    totalValue.textContent = String(total);
    bytesValue.textContent = formatBytes(bytes);
    element.setAttribute("data-clients-now", String(s.clientsNow));
    element.setAttribute("data-clients-total", String(total));
    element.setAttribute("data-bytes-relayed", String(bytes));
  }

  function drawSparkline() {
    const at = now();
    polyline.setAttribute("points", sparklinePoints(history.samples(at), SPARK_WIDTH, SPARK_HEIGHT));
    hourLine.setAttribute("points", sparklinePoints(hour.samples(at), SPARK_WIDTH, SPARK_HEIGHT));
    element.setAttribute("data-hour-bytes", String(hour.samples(at).reduce((a, b) => a + b, 0)));
  }

  function countTimeOn() {
    if (onSince === null) return;
    const at = now();
    state.addTimeOn(at - onSince);
    onSince = at;
    timeValue.textContent = formatDuration(state.msOn, t);
    element.setAttribute("data-ms-on", String(state.msOn));
  }

  function tick() {
    if (volunteer) {
      const s = volunteer.stats();
      const bytes = s.bytesToEgress + s.bytesToClients;
      history.add(bytes - lastBytes, now());
      hour.add(bytes - lastBytes, now());
      lastBytes = bytes;
      renderStats(s);
    }
    countTimeOn();
    drawSparkline();
  }

  function ensureVolunteer() {
    if (volunteer) return volunteer;
    const settings = { brokerUrl, capacity, maxRate, mediaCarrier: media, ...(options.volunteerOptions ?? {}) };
    volunteer = options.createVolunteer ? options.createVolunteer(settings) : new BrowserVolunteer(settings);
    volunteer.addEventListener("status", (event) => {
      if (widget.enabled) renderStatus(event.detail);
    });
    volunteer.addEventListener("stats", (event) => renderStats(event.detail));
    return volunteer;
  }

  function setEnabled(on, { persist = true } = {}) {
    on = Boolean(on);
    if (persist) state.enabled = on;
    button.setAttribute("aria-checked", on ? "true" : "false");
    onOff.textContent = t(on ? "widget.on" : "widget.off");
    if (on) {
      if (onSince === null) onSince = now();
      const v = ensureVolunteer();
      if (ticker === null) ticker = win.setInterval(tick, TICK_MS);
      v.start();
      renderStatus(v.status);
    } else {
      if (volunteer) volunteer.stop(); // every peer connection and WebSocket, at once
      if (ticker !== null) win.clearInterval(ticker);
      ticker = null;
      tick();
      onSince = null;
      renderStatus({ state: "off" });
    }
  }

  function destroy() {
    setEnabled(false, { persist: false });
    const i = widgets.indexOf(widget);
    if (i >= 0) widgets.splice(i, 1);
    delete element.unwallWidget;
  }

  // `data-armed` on the switch: it would take a click now (for the tests' drivers, which
  // click as a visitor does: only what they could see).
  const arm = (armed) => (armed ? button.setAttribute("data-armed", "") : button.removeAttribute("data-armed"));
  const gate = options.visibility ?? visibilityGate(win, element, { onChange: arm });
  if (options.visibility) arm(true);
  button.addEventListener("click", () => {
    if (!widget.enabled && !gate.allows()) {
      unseen.hidden = false; // not turned on: the visitor may not have seen what they clicked
      return;
    }
    unseen.hidden = true;
    setEnabled(!widget.enabled);
  });

  element.unwallWidget = widget;
  element.setAttribute("data-state", "off");
  renderStats({ clientsNow: 0, clientsTotal: 0, bytesToEgress: 0, bytesToClients: 0, dropped: 0 });
  widgets.push(widget);

  if (state.enabled) setEnabled(true, { persist: false });
  return widget;
}
