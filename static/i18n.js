// Page strings in English and Japanese, gettext style: the English text is the key.
//
//   t("Waiting")                      -> "待ち呼" on a Japanese page, "Waiting" otherwise
//   t("{n} waiting", {n: 3})          -> placeholders in braces, filled after the lookup
//
// Translations live in static/i18n/ja-*.js, one file per page or room, each adding to window.CB_JA;
// those files are loaded before this one and before the page's own script. A missing translation shows
// the English text (never an empty string or the key's name).
//
// The language: ?lang= in the URL, then the browser's languages (navigator.languages), then the center's
// [center] ui_language (the server writes it into <html data-ui-language>), then English. Only languages
// we have are chosen: a browser asking for German gets the center's language.
//
// A classic script (not a module) so that it runs before any module and before first paint.
(function () {
  "use strict";

  const SUPPORTED = ["en", "ja"];

  function base(tag) {
    return String(tag || "").trim().toLowerCase().split(/[-_]/)[0];
  }

  function chooseLanguage() {
    const fromQuery = new URLSearchParams(window.location.search).get("lang");
    const candidates = [fromQuery, ...(navigator.languages || [navigator.language]), document.documentElement.dataset.uiLanguage];
    for (const tag of candidates) {
      // ?lang= wins only when we have it; an unknown ?lang= falls through to the browser's choice
      if (tag && SUPPORTED.includes(base(tag))) return base(tag);
    }
    return "en";
  }

  const lang = chooseLanguage();
  // The locale for Intl: the browser's own tag when it is the chosen language (en-GB keeps its dates).
  const browserTag = (navigator.languages || [navigator.language]).find((tag) => base(tag) === lang);
  const locale = browserTag || (lang === "ja" ? "ja-JP" : "en-US");
  document.documentElement.lang = lang;

  function dictionary() {
    return lang === "ja" ? window.CB_JA || {} : {};
  }

  function fill(text, vars) {
    if (!vars) return text;
    return text.replace(/\{(\w+)\}/g, (whole, key) => (key in vars ? String(vars[key]) : whole));
  }

  /** The translation of `english` in the page's language, with {name} placeholders filled from `vars`. */
  function t(english, vars) {
    const translated = dictionary()[english];
    return fill(typeof translated === "string" && translated ? translated : english, vars);
  }

  const numberFormat = new Intl.NumberFormat(locale);

  /** Translate the static HTML: data-i18n (text), data-i18n-title, -placeholder, -aria-label. */
  function translatePage(root) {
    const scope = root || document;
    for (const node of scope.querySelectorAll("[data-i18n]")) {
      const key = node.dataset.i18n || node.textContent.trim(); // the English text, kept for a second pass
      node.dataset.i18n = key;
      node.textContent = t(key);
    }
    for (const [attr, data] of [["title", "i18nTitle"], ["placeholder", "i18nPlaceholder"], ["aria-label", "i18nAriaLabel"]]) {
      for (const node of scope.querySelectorAll(`[data-i18n-${attr}]`)) node.setAttribute(attr, t(node.dataset[data]));
    }
    if (document.title && scope === document) document.title = t(document.title);
  }

  window.t = t;
  window.cbI18n = {
    lang,
    locale,
    t,
    translatePage,
    formatNumber: (value) => numberFormat.format(value),
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => translatePage());
  else translatePage();
})();
