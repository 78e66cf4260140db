// The widget's frame (frame.html): the broker's origin, inside whatever page embeds it.
//
// It mounts the panel (panel.js) with the options of its query (lang, capacity,
// max-rate: the embedding page's data-lang, data-capacity and data-max-rate, each
// checked again here) and tells its parent window what may be shown outside: on or off,
// the state, counts, bytes relayed, the carrier, its height (to be sized) and its title
// (the frame's accessible name). Never an offer, an answer, a candidate, an address, a
// status text or the volunteer; and it listens to no message at all: the embedding page
// has nothing to say to it. Consent is a click on its switch.

import { mountLocalized } from "./panel.js";

/** The `type` of every message the frame posts to its parent. */
export const MESSAGE_TYPE = "unwall-widget";

/** The options a frame takes from its query, and the panel's attribute for each. */
export const QUERY_OPTIONS = Object.freeze({
  lang: "data-lang",
  capacity: "data-capacity",
  "max-rate": "data-max-rate",
});

/** Put the options of `search` (a URL's query) on the panel's element; nothing else. */
export function applyQuery(element, search) {
  const params = new URLSearchParams(search);
  for (const [name, attribute] of Object.entries(QUERY_OPTIONS)) {
    const value = params.get(name);
    if (value !== null && value.length <= 64) element.setAttribute(attribute, value);
  }
}

const count = (text) => {
  const n = Number(text);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
};

/**
 * What the embedding page may know of the panel on `element`: every field is a fixed
 * word, a count or the panel's own title. `enabled` is the switch's position.
 */
export function frameReport(element, { title = "", height = 0 } = {}) {
  const button = element.querySelector(".unwall-widget__switch");
  return {
    type: MESSAGE_TYPE,
    version: 1,
    enabled: button?.getAttribute("aria-checked") === "true",
    state: element.getAttribute("data-state") ?? "off",
    clientsNow: count(element.getAttribute("data-clients-now")),
    clientsTotal: count(element.getAttribute("data-clients-total")),
    bytesRelayed: count(element.getAttribute("data-bytes-relayed")),
    carrier: element.getAttribute("data-carrier") === "media" ? "media" : "datachannel",
    height: Math.max(0, Math.ceil(Number(height) || 0)),
    title: String(title).slice(0, 200),
  };
}

/** The attributes whose change is worth a message. */
const WATCHED = ["data-state", "data-clients-now", "data-clients-total", "data-bytes-relayed", "data-carrier"];

/**
 * Tell `parent` (the embedding window) the panel's state whenever it changes; returns
 * the function that sends it now. The target origin is "*": the frame cannot know its
 * embedder's, and nothing it says is a secret.
 */
export function reportTo(parent, element, { win = globalThis } = {}) {
  let last = "";
  const send = () => {
    const title = element.querySelector("h2")?.textContent ?? "";
    const report = frameReport(element, { title, height: element.getBoundingClientRect?.()?.height });
    const key = JSON.stringify(report);
    if (key === last) return;
    last = key;
    parent.postMessage(report, "*");
  };
  if (typeof win.MutationObserver === "function") {
    new win.MutationObserver(send).observe(element, { attributes: true, attributeFilter: WATCHED });
    const button = element.querySelector(".unwall-widget__switch");
    if (button) new win.MutationObserver(send).observe(button, { attributes: true, attributeFilter: ["aria-checked"] });
  }
  if (typeof win.ResizeObserver === "function") new win.ResizeObserver(send).observe(element);
  send();
  return send;
}

async function boot() {
  const element = document.getElementById("unwall-widget");
  if (!element) return;
  applyQuery(element, location.search);
  await mountLocalized(element);
  if (window.parent !== window) reportTo(window.parent, element, { win: window });
}

if (typeof document !== "undefined" && typeof location !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot, { once: true });
  else boot();
}
