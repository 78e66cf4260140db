// The languages of the volunteer widget and the broker's demo page.
//
// Every string is in a catalogue, ./i18n/LANG.json: plain JSON a translator edits, one key
// per message. A message may hold {name} placeholders, and a message that counts is an
// object of plural forms ({"one": ..., "few": ..., "other": ...}, the categories of
// Intl.PluralRules for that language; "other" is always there). No DOM, no network of its
// own (fetch is passed in): importable in node.

/** The languages there are catalogues for, and their writing direction. */
export const LANGUAGES = Object.freeze({
  en: "ltr",
  "zh-Hans": "ltr",
  "zh-Hant": "ltr",
  fa: "rtl",
  ru: "ltr",
  es: "ltr",
});

export const DEFAULT_LANGUAGE = "en";

/** Chinese written with traditional characters: by script, or by region. */
const TRADITIONAL = /^zh-(hant|tw|hk|mo)(-|$)/;

/** The catalogue language for one BCP 47 tag ("fa-IR" -> "fa", "zh-TW" -> "zh-Hant"), or null. */
export function supportedLanguage(tag) {
  if (typeof tag !== "string" || tag.length === 0 || tag.length > 64) return null;
  const lower = tag.trim().toLowerCase().replaceAll("_", "-");
  if (lower === "zh" || lower.startsWith("zh-")) return TRADITIONAL.test(lower) ? "zh-Hant" : "zh-Hans";
  const primary = lower.split("-")[0];
  return Object.keys(LANGUAGES).find((lang) => lang.toLowerCase() === primary) ?? null;
}

/** The first of `wanted` (data-lang, then the browser's languages) there is a catalogue for. */
export function pickLanguage(wanted) {
  for (const tag of wanted ?? []) {
    const lang = supportedLanguage(tag);
    if (lang) return lang;
  }
  return DEFAULT_LANGUAGE;
}

export function direction(lang) {
  return LANGUAGES[lang] ?? "ltr";
}

const catalogues = new Map();

/**
 * The catalogue of `lang`, fetched from ./i18n/ beside `base` (a module's URL) once and
 * then kept. One that cannot be had is an empty catalogue (the caller's fallback, English,
 * fills in).
 */
export function loadCatalogue(lang, { base, fetch = globalThis.fetch } = {}) {
  const url = new URL(`./i18n/${lang}.json`, base).href;
  if (!catalogues.has(url)) {
    const loading = (async () => {
      try {
        const response = await fetch(url);
        if (!response.ok) return {};
        const catalogue = await response.json();
        return catalogue && typeof catalogue === "object" ? catalogue : {};
      } catch {
        return {};
      }
    })();
    catalogues.set(url, loading);
  }
  return catalogues.get(url);
}

/**
 * t(key, params): the message `key` of `catalogue` (else of `fallback`, else the key
 * itself), its plural form chosen by params.n, its {placeholders} filled from params.
 */
export function translator(catalogue, lang = DEFAULT_LANGUAGE, fallback = {}) {
  let rules;
  try {
    rules = new Intl.PluralRules(lang);
  } catch {
    rules = new Intl.PluralRules(DEFAULT_LANGUAGE);
  }
  const pick = (message, n) => {
    if (message === null || typeof message !== "object") return message;
    return message[rules.select(n)] ?? message.other;
  };
  const t = (key, params = {}) => {
    const n = Number(params.n ?? 0);
    let message = pick(catalogue?.[key], n);
    if (typeof message !== "string") message = pick(fallback?.[key], n);
    if (typeof message !== "string") message = key;
    return message.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
  };
  t.lang = lang;
  return t;
}
