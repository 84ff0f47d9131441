// The Chat page as people use it, against the real server: threads kept by the server across
// reloads, stop, regenerate, edit-and-resend with both branches kept, rename, search, delete
// with undo, export; a compare of two variants with a vote the lab counts; the first-run screen
// and the Monitor's time axes on an empty data directory; every page at two widths.
import { test, expect, type Page } from "@playwright/test";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const shot = (page: Page, name: string) =>
  page.screenshot({ path: `test-results/screenshots/${name}.png`, fullPage: true });

const assistant = (page: Page) => page.locator('.message[data-role="assistant"]');

test("a thread is kept: send, stop, regenerate, edit, reload, rename, search, delete and undo, export", async ({ page }) => {
  await page.goto("/#/chat");
  await expect(page.getByTestId("model")).toHaveValue("smollm2");
  await page.getByTestId("max-tokens").fill("24");
  await page.getByTestId("prompt").fill("Name three colours.");
  await page.getByTestId("prompt").press("Enter");
  await expect(assistant(page).getByTestId("figures")).toContainText(/\d+ prompt \+ \d+ generated tokens/);
  await expect(page.getByTestId("thread")).toHaveCount(1);
  await expect(page.getByTestId("thread").first()).toContainText("Name three colours.");

  // Stop: a long answer cut short keeps what arrived, marked interrupted; Continue goes on.
  await page.getByTestId("max-tokens").fill("400");
  await page.getByTestId("prompt").fill("Write a long story about a lighthouse keeper.");
  await page.getByTestId("prompt").press("Enter");
  await expect(assistant(page).nth(1).locator(".content")).not.toBeEmpty();
  await page.getByTestId("prompt").press("Escape");
  await expect(assistant(page).nth(1).getByTestId("interrupted")).toBeVisible();
  const cut = (await assistant(page).nth(1).locator(".content").innerText()).length;
  expect(cut).toBeGreaterThan(0);
  await page.getByTestId("max-tokens").fill("8");
  await page.getByTestId("continue").click();
  await expect(assistant(page).nth(1).getByTestId("figures")).toBeVisible();
  expect((await assistant(page).nth(1).locator(".content").innerText()).length).toBeGreaterThan(cut);

  // Regenerate: a second answer beside the first, ‹ 2/2 ›.
  await page.getByTestId("max-tokens").fill("16");
  await assistant(page).nth(1).getByTestId("regenerate").click();
  await expect(assistant(page).nth(1).getByTestId("branches")).toContainText("2/2");
  await expect(assistant(page).nth(1).getByTestId("figures")).toBeVisible();

  // Edit-and-resend the first question: a new branch; the earlier one stays.
  const first = page.locator('.message[data-role="user"]').first();
  await first.getByTestId("edit").click();
  await first.getByTestId("edit-text").fill("Name three animals.");
  await first.getByTestId("edit-send").click();
  await expect(page.locator('.message[data-role="user"]')).toHaveCount(1);
  await expect(page.locator('.message[data-role="user"]').first()).toContainText("Name three animals.");
  await expect(assistant(page).first().getByTestId("figures")).toBeVisible();
  await expect(page.locator('.message[data-role="user"]').first().getByTestId("branches")).toContainText("2/2");

  // Reload: the thread and both branches are there.
  await page.reload();
  const question = page.locator('.message[data-role="user"]').first();
  await expect(question).toContainText("Name three animals.");
  await question.getByRole("button", { name: "Previous version" }).click();
  await expect(page.locator('.message[data-role="user"]').first()).toContainText("Name three colours.");
  await expect(page.locator('.message[data-role="user"]')).toHaveCount(2);
  await expect(assistant(page).nth(1).getByTestId("branches")).toContainText("2/2");
  await shot(page, "chat-thread");

  // Rename, then search finds it by a message's text and not by other text.
  const row = page.getByTestId("thread").first();
  await row.hover();
  await row.getByTestId("rename").click();
  await page.getByTestId("rename-input").fill("Colours and animals");
  await page.getByTestId("rename-input").press("Enter");
  await expect(page.getByTestId("thread").first()).toContainText("Colours and animals");
  await page.getByTestId("new-thread").click();
  await page.getByTestId("max-tokens").fill("8");
  await page.getByTestId("prompt").fill("What is a prime number?");
  await page.getByTestId("send").click();
  await expect(assistant(page).getByTestId("figures")).toBeVisible();
  await expect(page.getByTestId("thread")).toHaveCount(2);
  await page.getByTestId("thread-search").fill("lighthouse");
  await expect(page.getByTestId("thread")).toHaveCount(1);
  await expect(page.getByTestId("thread")).toContainText("Colours and animals");
  await page.getByTestId("thread-search").fill("");
  await expect(page.getByTestId("thread")).toHaveCount(2);

  // Delete, then undo.
  const doomed = page.getByTestId("thread").filter({ hasText: "Colours and animals" });
  await doomed.hover();
  await doomed.getByTestId("delete").click();
  await expect(page.getByTestId("thread")).toHaveCount(1);
  await page.getByTestId("undo").getByRole("button", { name: "Undo" }).click();
  await expect(page.getByTestId("thread")).toHaveCount(2);
  await expect(page.locator('.message[data-role="user"]').first()).toContainText("Name three colours.");

  // Export: Markdown of the branch shown, JSON of every branch.
  const id = await page.evaluate(() => localStorage.getItem("lantern.thread"));
  const md = await page.request.get(`/api/threads/${id}/export?format=md`);
  expect(md.headers()["content-disposition"]).toContain("Colours-and-animals.md");
  const text = await md.text();
  expect(text).toContain("# Colours and animals");
  expect(text).toContain("Name three colours.");
  expect(text).not.toContain("Name three animals.");
  const json = await (await page.request.get(`/api/threads/${id}/export?format=json`)).json();
  expect(json.messages.filter((m: any) => m.role === "user").map((m: any) => m.content)).toEqual(
    expect.arrayContaining(["Name three colours.", "Name three animals."]),
  );
});

test("a second window follows an answer another one is streaming", async ({ page, context }) => {
  await page.goto("/#/chat");
  await page.getByTestId("max-tokens").fill("500");
  await page.getByTestId("prompt").fill("Write a long story about a lighthouse keeper.");
  await page.getByTestId("prompt").press("Enter");
  await expect(assistant(page).locator(".content")).not.toBeEmpty();
  // The same browser profile opens the thread it last had: the one being written.
  const other = await context.newPage();
  await other.goto("/#/chat");
  const answer = assistant(other).first();
  await expect(answer).toHaveAttribute("data-state", "streaming");
  const early = (await answer.locator(".content").innerText()).length;
  await expect.poll(async () => (await answer.locator(".content").innerText()).length).toBeGreaterThan(early);
  await expect(answer).toHaveAttribute("data-state", "complete", { timeout: 60_000 });
  await expect(answer.getByTestId("figures")).toBeVisible();
  await other.close();
});

test("a compare sends one message to two variants and the vote reaches the lab", async ({ page }) => {
  // The page load's cookie carries the admin token for page.request.
  await page.goto("/#/chat");
  const request = page.request;
  // A second variant of the default model.
  const started = await (await request.post("/api/models/smollm2/quantize", { data: { to: ["q8_0"] } })).json();
  await expect
    .poll(async () => (await (await request.get(`/api/jobs/${started.job}`)).json()).state, { timeout: 90_000 })
    .toBe("done");
  await page.reload();
  await page.getByTestId("max-tokens").fill("16");
  await page.locator(".compare-with summary").click();
  await page.getByTestId("compare-smollm2-q8_0").check();
  await page.getByTestId("prompt").fill("Say hello in French.");
  await page.getByTestId("send").click();
  const compare = page.getByTestId("compare");
  await expect(compare.getByTestId("figures")).toHaveCount(2);
  // Blind until the vote: A and B, no model names.
  await expect(compare.getByTestId("figures").first()).toContainText("Answer A");
  await expect(compare).not.toContainText("smollm2");
  await page.getByTestId("vote-b").click();
  await expect(page.getByTestId("voted")).toContainText(/smollm2(-q8_0)? won: recorded in the lab's experiment chat-smollm2-vs-smollm2-q8_0/);
  await expect(compare).toContainText("smollm2-q8_0");
  // The vote is kept: after a reload the compare is revealed and not voted on again.
  await page.reload();
  await expect(page.getByTestId("voted")).toContainText("chat-smollm2-vs-smollm2-q8_0");
  await expect(page.getByTestId("vote-a")).toHaveCount(0);
  const experiment = await (await request.get("/api/lab/experiments/chat-smollm2-vs-smollm2-q8_0")).json();
  expect(experiment.votes).toBe(1);
  const summary = experiment.summary.variants.map((v: any) => [v.name, v.votes]);
  expect(summary).toEqual(expect.arrayContaining([["smollm2", 1], ["smollm2-q8_0", 1]]));
  await shot(page, "chat-compare");
  // The other tests see the installed models as they were.
  expect((await request.delete("/api/models/smollm2-q8_0")).ok()).toBeTruthy();
});

test("an empty data directory opens on the first-run screen, and its Monitor's axes stay in the window", async ({ page }) => {
  const data = mkdtempSync(join(tmpdir(), "lantern-e2e-empty-"));
  const server: ChildProcess = spawn(process.env.LANTERN_BIN ?? resolve(import.meta.dirname, "../../target/release/lantern"), ["serve", "--port", "0"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, LANTERN_HOME: data, LANTERN_HF_ENDPOINT: "http://127.0.0.1:9" },
  });
  try {
    const line: string = await new Promise((ok, fail) => {
      server.once("exit", (code) => fail(new Error(`lantern serve exited with ${code}`)));
      createInterface({ input: server.stdout! }).once("line", ok);
    });
    const url = line.replace("listening on ", "").replace(/\/v1$/, "");
    await page.goto(`${url}/#/chat`);
    const first = page.getByTestId("first-run");
    await expect(first).toContainText("No chat model installed yet");
    await expect(first.getByTestId("pull-smollm2")).toBeVisible();
    await first.getByTestId("pull-smollm2").click();
    // The hub is a closed port here: the pull fails and says why.
    await expect(first.locator(".error")).toContainText("cannot download", { timeout: 60_000 });
    await shot(page, "chat-first-run");

    await page.goto(`${url}/#/monitor`);
    await expect(page.getByTestId("chart-empty").first()).toHaveText("No traffic yet");
    for (const span of ["live", "5m", "1h", "1d"]) {
      await page.getByTestId(`window-${span}`).click();
      const chart = page.getByTestId("chart-tps").locator(".chart");
      await expect(chart).toHaveAttribute("data-from", /\d/);
      const [from, to] = [Number(await chart.getAttribute("data-from")), Number(await chart.getAttribute("data-to"))];
      const seconds = { live: 120, "5m": 300, "1h": 3600, "1d": 86400 }[span]!;
      expect(to - from).toBe(seconds);
      // The drawn axis is the window's, not years around one point.
      const [min, max] = [Number(await chart.getAttribute("data-min")), Number(await chart.getAttribute("data-max"))];
      expect(min).toBeGreaterThanOrEqual(from);
      expect(max).toBeLessThanOrEqual(to);
      expect(max - min).toBeGreaterThan(seconds * 0.9);
    }
    await expect(page.getByTestId("by-api")).toContainText("No traffic yet");
    await shot(page, "monitor-empty");
  } finally {
    // The Monitor's live stream would hold the server's graceful shutdown open.
    await page.goto("about:blank");
    server.kill("SIGTERM");
    const killed = setTimeout(() => server.kill("SIGKILL"), 15_000);
    await new Promise((ok) => server.once("exit", ok));
    clearTimeout(killed);
    rmSync(data, { recursive: true, force: true });
  }
});

test("every page at 1400 and 800 pixels wide", async ({ page }) => {
  for (const width of [1400, 800]) {
    await page.setViewportSize({ width, height: 900 });
    for (const name of ["chat", "compare", "models", "monitor", "benchmark", "settings"]) {
      await page.goto(`/#/${name}`);
      await expect(page.locator("nav a.active")).toHaveAttribute("href", `#/${name}`);
      await page.waitForTimeout(400);
      await shot(page, `${name}-${width}`);
    }
  }
});
