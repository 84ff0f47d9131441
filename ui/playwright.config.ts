import { defineConfig } from "@playwright/test";

// Debian's chromium (no browser download), against a real `lantern serve` that global-setup
// starts on a free loopback port with the default model and a fresh database.
export default defineConfig({
  testDir: "e2e",
  timeout: 120_000,
  workers: 1,
  outputDir: "test-results",
  globalSetup: "./e2e/global-setup.ts",
  use: {
    baseURL: process.env.LANTERN_UI_URL,
    viewport: { width: 1280, height: 900 },
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    },
  },
});
