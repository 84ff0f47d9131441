// One test per page against the real server and the real default model; each saves a
// screenshot of its page under test-results/screenshots/.
import { test, expect, type Page } from "@playwright/test";

const shot = (page: Page, name: string) =>
  page.screenshot({ path: `test-results/screenshots/${name}.png`, fullPage: true });

test("chat streams a reply and shows its figures", async ({ page }) => {
  await page.goto("/#/chat");
  await expect(page.getByTestId("model")).toHaveValue("smollm2");
  await page.getByTestId("prompt").fill("Name three colours.");
  await page.getByRole("button", { name: "Send" }).click();
  const answer = page.locator('.message[data-role="assistant"]').last();
  await expect(answer.getByTestId("figures")).toContainText(/\d+ prompt \+ \d+ generated tokens ·\s+TTFT \d+ ms ·\s+[\d.]+ tok\/s/);
  await expect(answer.locator(".content")).not.toBeEmpty();
  // The variant picker lists the model's variants; compression applies to the next message.
  await expect(page.getByTestId("base-model")).toHaveValue("smollm2");
  await page.getByTestId("compression").selectOption("truncate");
  await page.getByTestId("prompt").fill("And three animals?");
  await page.getByRole("button", { name: "Send" }).click();
  await expect(page.getByTestId("figures")).toHaveCount(2);
  await shot(page, "chat");
});

test("models lists the installed models and what is loaded", async ({ page }) => {
  await page.goto("/#/models");
  const row = page.getByTestId("models").locator("tr", { hasText: "smollm2" });
  await expect(row).toContainText("Q4_1");
  await expect(row).toContainText("loaded");
  await expect(page.getByTestId("engine-smollm2")).toContainText("KV f16");
  await expect(page.getByTestId("models")).toContainText("all-minilm");
  await shot(page, "models");
});

test("models quantizes with a visible progress bar", async ({ page }) => {
  await page.goto("/#/models");
  await page.getByTestId("quant-target-smollm2").selectOption("q4_0");
  await page.getByTestId("quantize-smollm2").click();
  const job = page.getByTestId("quantize-job");
  await expect(job.locator("progress")).toBeVisible();
  await expect(job).toContainText("done", { timeout: 60_000 });
  await expect(job).toContainText("Wrote smollm2-q4_0");
  await expect(page.getByTestId("models")).toContainText("smollm2-q4_0");
  await shot(page, "models-quantized");
});

test("models imports a GGUF file and shows a failed pull's reason", async ({ page }) => {
  await page.goto("/#/models");
  await page.getByTestId("import-path").fill(process.env.LANTERN_E2E_GGUF!);
  await page.getByTestId("import-name").fill("imported-smol");
  await page.getByTestId("import").click();
  const job = page.getByTestId("add-job");
  await expect(job.locator("progress")).toBeVisible();
  await expect(job).toContainText("Installed imported-smol", { timeout: 60_000 });
  await expect(page.getByTestId("models")).toContainText("imported-smol");
  await shot(page, "models-imported");
  // A file that is not a model is refused with the reason.
  await page.getByTestId("import-path").fill("/etc/hostname.gguf");
  await page.getByTestId("import").click();
  await expect(page.locator(".error")).toContainText("hostname.gguf");
  // The hub is unreachable here: the pull job fails and says where it tried.
  await page.getByTestId("pull-model").fill("smollm2");
  await page.getByTestId("pull-name").fill("pulled-smol");
  await page.getByTestId("pull").click();
  await expect(page.locator(".error")).toContainText("cannot download", { timeout: 60_000 });
  await expect(page.locator(".error")).toContainText("127.0.0.1:9");
});

test("compare runs two variants and records a blind vote", async ({ page }) => {
  await page.goto("/#/compare");
  await page.getByTestId("exp-name").fill("e2e-compare");
  await page.getByTestId("exp-prompts").fill("Say hi.\nName a fruit.");
  await page.getByTestId("exp-run").click();
  await expect(page.getByTestId("exp-job")).toContainText("done", { timeout: 90_000 });
  const outputs = page.getByTestId("exp-outputs");
  await expect(outputs.locator("tbody tr")).toHaveCount(2);
  await expect(outputs).not.toContainText("…");
  await page.getByTestId("vote-next").click();
  await expect(page.getByTestId("vote-pair")).toBeVisible();
  await page.getByTestId("vote-a").click();
  await expect(page.getByTestId("vote-revealed")).toContainText("winner: a");
  await expect(page.getByTestId("exp-summary")).toContainText("of 1");
  await shot(page, "compare");
});

test("monitor charts move after requests", async ({ page, request }) => {
  test.setTimeout(240_000);
  await page.goto("/#/monitor");
  const tps = page.getByTestId("chart-tps").locator(".chart");
  await expect(tps).toHaveAttribute("data-points", /^[1-9]/);
  const r = await request.post("/v1/chat/completions", {
    headers: { "X-Session-Id": "e2e-monitor" },
    data: { model: "smollm2", messages: [{ role: "user", content: "Count to five." }], max_tokens: 24 },
  });
  expect(r.ok()).toBeTruthy();
  await expect(page.getByTestId("sessions")).toContainText("e2e-monitor", { timeout: 15_000 });
  // The snapshot after the request carries its TTFT: the chart's points keep coming.
  const before = Number(await tps.getAttribute("data-points"));
  await expect.poll(async () => Number(await tps.getAttribute("data-points"))).toBeGreaterThan(before);
  // Two paraphrases asking the semantic cache: the second is answered from the first.
  for (const q of ["What is the capital of France?", "What's the capital city of France?"]) {
    const s = await request.post("/v1/chat/completions", {
      data: { model: "smollm2", messages: [{ role: "user", content: q }], max_tokens: 8, cache: { semantic: 0.95 } },
    });
    expect(s.ok()).toBeTruthy();
  }
  await page.reload();
  await expect(page.getByTestId("semantic-hit-rate")).toHaveText(/^[1-9]\d*%$/, { timeout: 15_000 });
  await expect(page.getByTestId("semantic-cache").locator(".bar")).toHaveCount(9);
  // The session's answers are measured; drift probes run from the page, the first a baseline.
  await expect(page.getByTestId("consistency")).toContainText("answers in the last day", { timeout: 15_000 });
  await page.getByTestId("drift-model").selectOption("smollm2");
  await page.getByTestId("drift-probe").click();
  await expect(page.getByTestId("drift-last")).toContainText("baseline", { timeout: 90_000 });
  await page.getByTestId("drift-probe").click();
  await expect(page.getByTestId("drift-verdict")).toHaveText("steady", { timeout: 90_000 });
  await shot(page, "monitor");
});

test("benchmark runs with progress and stores the run", async ({ page }) => {
  await page.goto("/#/benchmark");
  await expect(page.getByTestId("devices")).toContainText("CPU");
  await page.getByTestId("bench-model").selectOption("synthetic:tiny");
  await page.getByTestId("bench-start").click();
  await expect(page.getByTestId("bench-job").locator("progress")).toBeVisible();
  await expect(page.getByTestId("bench-job")).toContainText("done:", { timeout: 90_000 });
  await expect(page.getByTestId("bench-runs")).toContainText("synthetic:tiny");
  await expect(page.getByTestId("bench-runs")).toContainText("tg16");
  await shot(page, "benchmark");
});

test("settings persist across a reload", async ({ page }) => {
  await page.goto("/#/settings");
  // The server's own settings: saved to settings.toml, applied, and read back after a reload.
  await page.getByTestId("set-keep-alive").fill("-1");
  await page.getByTestId("set-max-seqs").fill("8");
  await page.getByTestId("set-response-cache").fill("32");
  await page.getByTestId("server-settings-save").click();
  await expect(page.getByTestId("server-settings-saved")).toContainText("Applies at the next start: response_cache_mib");
  await expect(page.getByTestId("restart-needed")).toBeVisible();
  await page.reload();
  await expect(page.getByTestId("set-keep-alive")).toHaveValue("-1");
  await expect(page.getByTestId("set-max-seqs")).toHaveValue("8");
  await page.getByTestId("set-keep-alive").fill("someday");
  await page.getByTestId("server-settings-save").click();
  await expect(page.getByTestId("server-settings-error")).toContainText("keep_alive");
  await page.getByTestId("set-keep-alive").fill("5m");
  await page.getByTestId("set-response-cache").fill("64");
  await page.getByTestId("server-settings-save").click();
  await expect(page.getByTestId("server-settings-saved")).toHaveText("Saved and applied.");
  await page.getByTestId("default-budget").fill("123456");
  await page.getByTestId("p95-threshold").fill("9999");
  await page.getByTestId("settings-save").click();
  await expect(page.getByTestId("settings-saved")).toHaveText("Saved.");
  await page.reload();
  await expect(page.getByTestId("default-budget")).toHaveValue("123456");
  await expect(page.getByTestId("p95-threshold")).toHaveValue("9999");
  // A bad value shows the server's own message.
  await page.getByTestId("p95-threshold").fill("-5");
  await page.getByTestId("settings-save").click();
  await expect(page.getByTestId("settings-error")).toContainText("p95_latency_ms");
  await shot(page, "settings");
});

test("models adds a remote backend and compare releases it as a canary, then rolls it back", async ({ page, request }) => {
  // The server itself stands in for a remote engine, on its own loopback port.
  page.on("dialog", (d) => d.accept());
  await page.goto("/#/models");
  await page.getByTestId("backend-name").fill("self");
  await page.getByTestId("backend-url").fill(`${process.env.LANTERN_UI_URL}/v1`);
  await page.getByTestId("backend-models").fill("smollm2");
  await page.getByTestId("backend-key").fill("sk-e2e-never-shown");
  await page.getByTestId("backend-save").click();
  await expect(page.getByTestId("backend-self")).toContainText("self/smollm2");
  await expect(page.getByTestId("backend-self")).toContainText("kept");
  await page.getByTestId("backend-test-self").click();
  await expect(page.getByTestId("backend-health-self")).toContainText("up", { timeout: 15_000 });
  await expect(page.getByTestId("backends")).not.toContainText("sk-e2e-never-shown");
  await shot(page, "models-backends");
  const answer = await request.post("/v1/chat/completions", {
    data: { model: "self/smollm2", messages: [{ role: "user", content: "Hi" }], max_tokens: 4 },
  });
  expect(answer.ok()).toBeTruthy();
  expect(answer.headers()["x-lantern-served-by"]).toBe("self/smollm2");

  await page.goto("/#/compare");
  await page.getByTestId("canary-name").fill("e2e-release");
  await page.getByTestId("canary-current").selectOption("smollm2");
  await page.getByTestId("canary-next").selectOption("self/smollm2");
  await page.getByTestId("canary-start").click();
  const canary = page.getByTestId("canary-e2e-release");
  await expect(canary).toContainText("running");
  await expect(canary).toContainText("started at 5% of traffic");
  for (let i = 0; i < 3; i++) {
    const r = await request.post("/v1/chat/completions", {
      data: { model: "experiment:e2e-release", messages: [{ role: "user", content: "Hi" }], max_tokens: 2 },
    });
    expect(r.ok()).toBeTruthy();
  }
  await expect(page.getByTestId("canary-share-e2e-release")).toHaveText("5.0%");
  await expect(canary).toContainText("of 3 requests");
  await page.getByTestId("canary-rollback-e2e-release").click();
  await expect(canary).toContainText("rolled back");
  await expect(canary).toContainText("rolled back by hand");
  await expect(page.getByTestId("canary-share-e2e-release")).toHaveText("0.0%");
  await shot(page, "compare-canary");

  await page.goto("/#/models");
  await page.getByTestId("backend-remove-self").click();
  await expect(page.getByTestId("backends")).not.toContainText("self/smollm2");
});
