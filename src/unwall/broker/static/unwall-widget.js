// The embeddable unwall volunteer widget.
//
//   <script type="module" src="https://BROKER/widget/unwall-widget.js"></script>
//   <div data-unwall-widget></div>
//
// This script runs in the embedding page and only makes, in every [data-unwall-widget]
// element, a frame of the broker's own origin (BROKER/widget/frame.html) where the widget
// itself runs (panel.js, frame.js). The page can therefore neither switch volunteering on
// (consent is a click inside the frame, remembered in the frame's own storage) nor reach
// the volunteer, its clients' offers or their addresses.
//
// Options on the element: data-broker (the broker's URL; default: where this script came
// from, minus /widget/...), data-capacity (clients at once, default 4), data-max-rate
// (bytes per second over both directions; default: no cap), data-lang (en, zh-Hans,
// zh-Hant, fa, ru, es; default: the browser's first language there is a catalogue for).
// They become the frame's query.
//
// What the page gets back, read-only (it is what the frame said; changing it changes
// nothing in the frame): on the element, data-state (off|starting|idle|helping|error),
// data-enabled (true|false), data-clients-now, data-clients-total, data-bytes-relayed and
// data-carrier (media|datachannel), present once the frame has mounted. The frame's
// height follows its content.

import { defaultBrokerUrl, positiveInt } from "./logic.js";

export { defaultBrokerUrl };

const SCRIPT_URL = import.meta.url;

export const FRAME_PATH = "/widget/frame.html";
/** What the frame's sandbox allows: its scripts, in its own (the broker's) origin. */
export const FRAME_SANDBOX = "allow-scripts allow-same-origin";
const MESSAGE_TYPE = "unwall-widget";
const STATES = new Set(["off", "starting", "idle", "helping", "error"]);
const CARRIERS = new Set(["media", "datachannel"]);
const MAX_HEIGHT = 2000;
const FIRST_HEIGHT = 260; // until the frame says


/** The frame's URL for `element` (its options in the query), or null for a broker URL
 * that is not http(s). */
export function frameUrl(element, scriptUrl = SCRIPT_URL) {
  const data = element.dataset ?? {};
  let url;
  try {
    const broker = new URL(data.broker || defaultBrokerUrl(scriptUrl), scriptUrl);
    if (broker.protocol !== "https:" && broker.protocol !== "http:") return null;
    url = new URL(`${broker.origin}${broker.pathname.replace(/\/+$/, "")}${FRAME_PATH}`);
  } catch {
    return null;
  }
  const lang = typeof data.lang === "string" ? data.lang.trim() : "";
  if (lang && lang.length <= 64) url.searchParams.set("lang", lang);
  const capacity = positiveInt(data.capacity);
  if (capacity) url.searchParams.set("capacity", String(capacity));
  const maxRate = positiveInt(data.maxRate);
  if (maxRate) url.searchParams.set("max-rate", String(maxRate));
  return url;
}

const isCount = (n) => Number.isSafeInteger(n) && n >= 0;

/** A frame's message, checked field by field, or null. */
export function readReport(data) {
  if (data === null || typeof data !== "object" || data.type !== MESSAGE_TYPE) return null;
  const { enabled, state, clientsNow, clientsTotal, bytesRelayed, carrier, height, title } = data;
  if (typeof enabled !== "boolean" || !STATES.has(state) || !CARRIERS.has(carrier)) return null;
  if (![clientsNow, clientsTotal, bytesRelayed].every(isCount)) return null;
  return {
    enabled,
    state,
    clientsNow,
    clientsTotal,
    bytesRelayed,
    carrier,
    height: isCount(height) ? Math.min(height, MAX_HEIGHT) : null,
    title: typeof title === "string" ? title.slice(0, 200) : "",
  };
}

const embedded = new WeakSet();

/**
 * Put the widget's frame in `element` (once). Returns the iframe, or null when the
 * element's broker URL is unusable.
 */
export function embed(element, { scriptUrl = SCRIPT_URL } = {}) {
  if (embedded.has(element)) return element.querySelector("iframe");
  const url = frameUrl(element, scriptUrl);
  if (url === null) return null;
  embedded.add(element);
  const doc = element.ownerDocument;
  const win = doc.defaultView ?? globalThis;

  const iframe = doc.createElement("iframe");
  iframe.setAttribute("sandbox", FRAME_SANDBOX);
  iframe.setAttribute("referrerpolicy", "no-referrer");
  iframe.setAttribute("title", "unwall");
  // Through the CSSOM: a page whose CSP forbids inline styles still sizes it.
  Object.assign(iframe.style, {
    display: "block",
    width: "100%",
    maxWidth: "420px",
    height: `${FIRST_HEIGHT}px`,
    border: "0",
    margin: "0",
    padding: "0",
    overflow: "hidden",
    colorScheme: "normal", // as the frame's: its corners stay transparent
  });
  iframe.src = url.href;
  element.replaceChildren(iframe);

  const origin = url.origin;
  win.addEventListener("message", (event) => {
    // Only the frame this element holds, from the broker's origin.
    if (event.source !== iframe.contentWindow || event.origin !== origin) return;
    const report = readReport(event.data);
    if (report === null) return;
    element.setAttribute("data-state", report.state);
    element.setAttribute("data-enabled", String(report.enabled));
    element.setAttribute("data-clients-now", String(report.clientsNow));
    element.setAttribute("data-clients-total", String(report.clientsTotal));
    element.setAttribute("data-bytes-relayed", String(report.bytesRelayed));
    element.setAttribute("data-carrier", report.carrier);
    if (report.height) iframe.style.height = `${report.height}px`;
    if (report.title) iframe.setAttribute("title", report.title);
  });
  return iframe;
}

/** Embed the widget in every [data-unwall-widget] element of `doc` not yet done. */
export function embedAll(doc = document) {
  return [...doc.querySelectorAll("[data-unwall-widget]")].map((element) => embed(element));
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => embedAll(), { once: true });
  else embedAll();
}
