// The broker's demo page in the visitor's language: ?lang=..., else the browser's first
// language there is a catalogue for (i18n.js). The widget on the page speaks the same one.
import { direction, loadCatalogue, pickLanguage, translator } from "./i18n.js";

const wanted = new URLSearchParams(location.search).get("lang");
const lang = pickLanguage([wanted, ...(navigator.languages ?? [navigator.language])]);

// At once, before anything is awaited: the widget reads it when it mounts.
for (const slot of document.querySelectorAll("[data-unwall-widget]")) {
  if (!slot.dataset.lang) slot.dataset.lang = lang;
}
document.documentElement.lang = lang;
document.documentElement.dir = direction(lang);
for (const link of document.querySelectorAll("nav.languages a")) {
  if (link.hreflang === lang) link.setAttribute("aria-current", "page");
}

const base = import.meta.url;
const english = await loadCatalogue("en", { base });
const t = translator(lang === "en" ? english : await loadCatalogue(lang, { base }), lang, english);
for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
document.title = t("page.title");
document.documentElement.dataset.i18nReady = lang;
