// Start the real server for the browser tests and stop it after them.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export default async function globalSetup() {
  const bin = process.env.LANTERN_BIN ?? resolve(import.meta.dirname, "../../target/release/lantern");
  const data = mkdtempSync(join(tmpdir(), "lantern-e2e-"));
  const server = spawn(bin, ["serve", "smollm2", "--port", "0", "--db", join(data, "lantern.db")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const line: string = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("lantern serve did not start in 60 s")), 60_000);
    server.once("exit", (code) => fail(new Error(`lantern serve exited with ${code}`)));
    createInterface({ input: server.stdout! }).once("line", (l) => {
      clearTimeout(timer);
      ok(l);
    });
  });
  const url = line.replace("listening on ", "").replace(/\/v1$/, "");
  process.env.LANTERN_UI_URL = url;
  return async () => {
    server.kill("SIGTERM");
    await new Promise((ok) => server.once("exit", ok));
    rmSync(data, { recursive: true, force: true });
  };
}
