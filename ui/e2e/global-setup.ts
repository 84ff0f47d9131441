// Start the real server for the browser tests and stop it after them.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

export default async function globalSetup() {
  const bin = process.env.LANTERN_BIN ?? resolve(import.meta.dirname, "../../target/release/lantern");
  const data = mkdtempSync(join(tmpdir(), "lantern-e2e-"));
  // A data directory of its own, with the installed default models linked in: what the tests
  // write (quantized variants) stays out of the user's.
  const home = process.env.LANTERN_HOME ?? join(process.env.XDG_DATA_HOME ?? join(homedir(), ".local/share"), "lantern");
  mkdirSync(join(data, "models"));
  for (const model of ["smollm2", "all-minilm"]) symlinkSync(join(home, "models", model), join(data, "models", model));
  // The file the import test copies in.
  const smol = join(home, "models", "smollm2");
  process.env.LANTERN_E2E_GGUF = realpathSync(join(smol, readdirSync(smol).find((f) => f.endsWith(".gguf"))!));
  const server = spawn(bin, ["serve", "smollm2", "--port", "0", "--db", join(data, "lantern.db")], {
    stdio: ["ignore", "pipe", "inherit"],
    // Pulls go to a closed loopback port: the page must show the download error.
    env: { ...process.env, LANTERN_HOME: data, LANTERN_HF_ENDPOINT: "http://127.0.0.1:9" },
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
