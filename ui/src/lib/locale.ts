// Imported first (before uPlot, which builds an Intl formatter from navigator.language when it
// loads): a webview started without a locale (LANG=C) reports the language "C", which Intl
// rejects, and the whole UI would fail to start. Such a webview reads as en-US instead.
try {
  new Intl.NumberFormat(navigator.language);
} catch {
  Object.defineProperty(navigator, "language", { value: "en-US", configurable: true });
  Object.defineProperty(navigator, "languages", { value: ["en-US"], configurable: true });
}
