#!/usr/bin/env python3
"""End-to-end serving benchmark: Lantern's `serve` against llama.cpp's llama-server.

Same GGUF, same thread count, same load (benches/load.py: C concurrent streaming
chat clients, --requests-per-client requests each, temperature 0, max_tokens
--max-tokens), one server at a time. Writes
benches/results/<date>-serve-<model>.json (everything load.py measured) and .md
(tok/s, ratio Lantern / llama-server, TTFT, ITL, errors per level, plus the
prefix-cache test).

  .venv/bin/python benches/serve_compare.py [MODEL] [--concurrency 1,4,8,16,32]
      [--requests-per-client 2] [--max-tokens 128] [--threads 2]
      [--engines lantern,llama-server] [--llama-np per-level|N] [--no-prefix-test]
      [--wait-quiet SECONDS] [--retry-noisy N] [--busy-limit 0.15] [--lantern-port 18090]
      [--llama-port 18091] [--out-dir benches/results] [--tag SUFFIX]

Binaries: $LANTERN_BIN or target/release/lantern (never built here: run
`cargo build --release` first); $LLAMA_SERVER_BIN or what
`benches/llamacpp/build.sh llama-server` prints (it builds it when missing).
Run it with the venv's python (needs httpx): .venv/bin/python benches/serve_compare.py

llama-server configuration (--llama-np). llama-server has a fixed number of
slots (-np) that share the context (-c), so it must be told how many requests
it may batch. The default, `per-level`, restarts it for every concurrency level
with -np C -c C*2048: every client gets a slot, no slot sits idle, and each slot
has the same 2,048-token context at every level. That is llama-server tuned for
each load, i.e. the strongest baseline to compare against. `--llama-np 32` (any
N) instead starts it once with -np N -c N*2048 for all levels, as one would
deploy it (continuous batching is on by default, -cb). Lantern needs no such
setting and is started once for all levels. Each server gets a fresh start
before the prefix test, so that test always measures a cold prefix first.
Per-slot context 2,048 is plenty: prompts are < 100 tokens (the prefix test
~1,000) plus max_tokens. Lantern is asked for MODEL by name (it lists every
installed model and loads the one asked for); the JSON and the table record the
model named in the responses.

Noise. On a small machine both engines use every core (--threads defaults to 2
for a 2-core box), so any other busy process ruins the figures, llama.cpp's
spin-waiting thread pool worst of all (measured: tg 95 -> 5 tok/s with a compile
on the other core). The script therefore records, for every measurement, the
share of all CPU time used by other processes (and by the load generator
itself), warns above --busy-limit and flags it in the table; --wait-quiet S
waits up to S seconds for quiet CPUs before each server starts, and
--retry-noisy N measures a noisy level again (up to N times). Servers log to
benches/.work/serve-logs/ and are stopped on exit, on SIGTERM and (Linux) when
this script is killed.
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import load  # noqa: E402

LOG_DIR = ROOT / "benches/.work/serve-logs"


def model_path(name):
    if name.endswith(".gguf"):
        return Path(name)
    home = Path(os.environ.get("LANTERN_HOME") or
                Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "lantern")
    files = sorted((home / "models" / name).glob("*.gguf"))
    if not files:
        sys.exit(f"model {name} is not installed (run models/fetch)")
    return files[0]


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), None where unavailable.

    Measured while none of our servers runs, so it is someone else's load: with 2
    cores and 2 engine threads, a busy core makes spin-waiting thread pools (ggml,
    rayon) collapse, and the figures are worthless."""
    def snap():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(f), f[3] + (f[4] if len(f) > 4 else 0)
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return round(1.0 - (i1 - i0) / max(1, t1 - t0), 3)
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(limit, max_wait):
    """Poll until the CPUs are quieter than limit (2 s samples), for at most max_wait s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        busy = cpu_busy(2.0)
        if busy is None or busy <= limit:
            return
        print(f"[serve] CPUs {busy:.0%} busy, waiting for quiet...", file=sys.stderr)


def check_quiet(report, label, limit):
    busy = cpu_busy()
    report.setdefault("background_cpu_busy", {})[label] = busy
    if busy is not None and busy > limit:
        print(f"[serve] WARNING: CPUs {busy:.0%} busy before {label} with no server running; "
              f"the figures will not be meaningful (is a build running?)", file=sys.stderr)


def _die_with_parent():
    """preexec_fn: SIGTERM the server when this script dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through Server.__exit__, which stops the server


def port_in_use(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """One server process: start, wait for GET /health == 200, stop (SIGTERM, then SIGKILL)."""

    wait_quiet_s = 0.0
    busy_limit = 0.15

    def __init__(self, name, argv, port, log_name):
        self.name, self.argv, self.port = name, argv, port
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / log_name
        self.proc = None

    def __enter__(self):
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use; pick another")
        if self.wait_quiet_s > 0:
            wait_quiet(self.busy_limit, self.wait_quiet_s)
        self.log = open(self.log_path, "w")
        print(f"[serve] {self.name}: {' '.join(map(str, self.argv))}  (log {self.log_path})",
              file=sys.stderr)
        self.proc = subprocess.Popen([str(a) for a in self.argv], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_ready(self, timeout=180.0):
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it "
                                   f"was ready; see {self.log_path}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    self.ready_s = time.monotonic() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def check_alive(self):
        """None while running, else a message (the server died under load)."""
        if self.proc is not None and self.proc.poll() is not None:
            msg = (f"{self.name} exited early with status {self.proc.returncode}; "
                   f"see {self.log_path}")
            print(f"[serve] ERROR: {msg}", file=sys.stderr)
            return msg
        return None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


def load_args(args, concurrency, prefix, no_load):
    argv = ["--model", "x", "--concurrency", ",".join(map(str, concurrency)),
            "--requests-per-client", str(args.requests_per_client),
            "--max-tokens", str(args.max_tokens), "--warmup", str(args.warmup),
            "--timeout", str(args.timeout)]
    if prefix:
        argv.append("--prefix-test")
    if no_load:
        argv.append("--no-load")
    return load.parse_args(argv)


def run_load(url, api_model, args, concurrency, prefix=False, no_load=False):
    la = load_args(args, concurrency, prefix, no_load)
    la.url, la.model = url, api_model
    return asyncio.run(load.main_async(la))


def _jiffies_busy():
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f), sum(f) - idle


def _jiffies_proc(pid):
    # fields after the ")" of the comm: utime is the 12th, stime the 13th
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def foreign_cpu(fn, pid, label, limit):
    """Run fn(); return (its result, CPU shares meanwhile) where the shares are fractions of
    all CPU time: `foreign_cpu` used by processes other than the server `pid` and this
    one, `client_cpu` by this load generator. Warns when foreign_cpu is above limit."""
    try:
        t0, b0 = _jiffies_busy()
        s0, m0 = _jiffies_proc(pid), _jiffies_proc("self")
    except (OSError, ValueError, IndexError):
        return fn(), {"foreign_cpu": None, "client_cpu": None}
    res = fn()
    try:
        t1, b1 = _jiffies_busy()
        s1, m1 = _jiffies_proc(pid), _jiffies_proc("self")
    except (OSError, ValueError, IndexError):
        return res, {"foreign_cpu": None, "client_cpu": None}
    total = max(1, t1 - t0)
    frac = round(max(0.0, ((b1 - b0) - (s1 - s0) - (m1 - m0)) / total), 3)
    if frac > limit:
        print(f"[serve] WARNING: other processes used {frac:.0%} of the CPUs during {label}; "
              f"its figures are not meaningful", file=sys.stderr)
    return res, {"foreign_cpu": frac, "client_cpu": round((m1 - m0) / total, 3)}


def measured(srv, args, label, fn):
    """fn() with CPU shares; repeated (up to --retry-noisy more times, after waiting for
    quiet CPUs) while other processes were busier than --busy-limit meanwhile."""
    for attempt in range(args.retry_noisy + 1):
        if attempt:
            print(f"[serve] {label}: noisy, measuring again ({attempt}/{args.retry_noisy})",
                  file=sys.stderr)
            wait_quiet(args.busy_limit, max(args.wait_quiet, 60.0))
        res, shares = foreign_cpu(fn, srv.proc.pid, label, args.busy_limit)
        res.update(shares)
        res["attempts"] = attempt + 1
        res["server_died"] = srv.check_alive()
        if res["server_died"] or (shares["foreign_cpu"] or 0) <= args.busy_limit:
            break
    return res


def measure_prefix(srv, url, api_model, args):
    # every call salts the filler afresh, so a repeat starts from a cold prefix again
    return measured(srv, args, f"{srv.name} prefix test", lambda: run_load(
        url, api_model, args, [], prefix=True, no_load=True)["prefix_test"])


def measure_level(srv, url, api_model, args, c):
    return measured(srv, args, f"{srv.name} C={c}",
                    lambda: run_load(url, api_model, args, [c])["levels"][0])


def served_model(port, wanted, fallback):
    """The id to send as `model`: `wanted` when GET /v1/models lists it (Lantern lists every
    installed model and loads the one asked for on demand, so the first entry may be
    another model), else the one listed entry whose id contains `fallback`'s stem, else the
    first listed; `fallback` when the list cannot be read."""
    try:
        data = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5.0).json()["data"]
        ids = [m["id"] for m in data]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return fallback
    if wanted in ids:
        return wanted
    stem = Path(fallback).stem.split(".")[0]
    return next((i for i in ids if stem and stem in i), ids[0] if ids else fallback)


def lantern_bin():
    b = Path(os.environ.get("LANTERN_BIN") or ROOT / "target/release/lantern")
    if not b.is_file():
        sys.exit(f"{b} not found: run `cargo build --release` or set LANTERN_BIN")
    return b


def llama_server_bin():
    b = os.environ.get("LLAMA_SERVER_BIN")
    if not b:
        b = subprocess.run(["bash", str(ROOT / "benches/llamacpp/build.sh"), "llama-server"],
                           check=True, capture_output=False, stdout=subprocess.PIPE,
                           text=True).stdout.strip().splitlines()[-1]
    if not Path(b).is_file():
        sys.exit(f"llama-server not found at {b}")
    return Path(b)


def bench_lantern(args, model):
    binary = lantern_bin()
    port = args.lantern_port
    url = f"http://127.0.0.1:{port}/v1"
    argv = [binary, "serve", args.model if not args.model.endswith(".gguf") else model,
            "--port", port, "--threads", args.threads]
    out = {"engine": "lantern", "binary": str(binary), "argv": [str(a) for a in argv]}
    try:
        out["version"] = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                        timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["version"] = None
    with Server("lantern", argv, port, "lantern.log") as srv:
        out["ready_s"] = round(srv.ready_s, 2)
        api_model = args.lantern_api_model or (
            args.model if not args.model.endswith(".gguf") else served_model(port, None, model))
        out["api_model"] = api_model
        if args.prefix_test:
            out["prefix_test"] = measure_prefix(srv, url, api_model, args)
        out["levels"] = [measure_level(srv, url, api_model, args, c) for c in args.conc]
    return out


def bench_llama_server(args, model):
    binary = llama_server_bin()
    port = args.llama_port
    url = f"http://127.0.0.1:{port}/v1"
    api_model = str(model)  # llama-server accepts any name; replaced by the one it lists

    def argv(np_):
        return [binary, "-m", model, "--host", "127.0.0.1", "--port", port,
                "-np", np_, "-c", np_ * args.ctx_per_slot, "-t", args.threads,
                "--no-webui"] + args.llama_extra

    out = {"engine": "llama-server", "binary": str(binary), "np_mode": args.llama_np,
           "levels": [], "argv": {}}
    try:
        v = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        out["version"] = next((ln.strip() for ln in (v.stderr + v.stdout).splitlines()
                               if ln.startswith("version")), None)
    except (OSError, subprocess.SubprocessError):
        out["version"] = None
    if args.llama_np == "per-level":
        for i, c in enumerate(args.conc):
            a = argv(c)
            out["argv"][str(c)] = [str(x) for x in a]
            with Server(f"llama-server np={c}", a, port, f"llama-server-np{c}.log") as srv:
                api_model = out["api_model"] = served_model(port, None, api_model)
                if i == 0 and args.prefix_test:
                    out["prefix_test"] = measure_prefix(srv, url, api_model, args)
                    out["prefix_test"]["np"] = c
                out["levels"].append(measure_level(srv, url, api_model, args, c))
    else:
        np_ = int(args.llama_np)
        a = argv(np_)
        out["argv"]["all"] = [str(x) for x in a]
        with Server(f"llama-server np={np_}", a, port, f"llama-server-np{np_}.log") as srv:
            api_model = out["api_model"] = served_model(port, None, api_model)
            if args.prefix_test:
                out["prefix_test"] = measure_prefix(srv, url, api_model, args)
                out["prefix_test"]["np"] = np_
            out["levels"] = [measure_level(srv, url, api_model, args, c) for c in args.conc]
    return out


def fmt(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def markdown(report):
    eng = report["engines"]
    lan, lla = eng.get("lantern"), eng.get("llama-server")
    lines = [f"# {report['model']} — Lantern serve vs llama-server ({report['date']})", "",
             f"CPU: {report['cpu']}, {report['cores']} cores; {report['threads']} threads each; "
             f"{report['requests_per_client']} streaming chat requests per client, max_tokens "
             f"{report['max_tokens']}, temperature 0, distinct prompts; one server at a time.",
             f"llama-server: {report['llama_np_note']}.",
             "Background CPU load before each server (0 = quiet): "
             + ", ".join(f"{k} {v}" for k, v in report.get("background_cpu_busy", {}).items())
             + ".", "",
             "tok/s = completion tokens of all requests / wall time of the level. TTFT and ITL "
             "(gap between content chunks) in ms, p50/p95. errors = failed / total requests.", ""]
    by = {name: {lv["concurrency"]: lv for lv in e["levels"]} for name, e in eng.items() if e}
    head = ["C"]
    if lan:
        head += ["Lantern tok/s"]
    if lla:
        head += ["llama-server tok/s"]
    if lan and lla:
        head += ["ratio"]
    for name, label in (("lantern", "Lantern"), ("llama-server", "llama-server")):
        if eng.get(name):
            head += [f"{label} TTFT p50/p95", f"{label} ITL p50/p95", f"{label} errors"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in report["concurrency"]:
        a, b = by.get("lantern", {}).get(c), by.get("llama-server", {}).get(c)
        row = [str(c)]
        if lan:
            row.append(fmt(a and a["tokens_per_s"]))
        if lla:
            row.append(fmt(b and b["tokens_per_s"]))
        if lan and lla:
            r = (a["tokens_per_s"] / b["tokens_per_s"]
                 if a and b and a["tokens_per_s"] and b["tokens_per_s"] else None)
            row.append("—" if r is None else f"{r:.3f}×")
        for lv in ([a] if lan else []) + ([b] if lla else []):
            if lv is None:
                row += ["—", "—", "—"]
                continue
            row += [f"{fmt(lv['ttft_ms']['p50'])} / {fmt(lv['ttft_ms']['p95'])}",
                    f"{fmt(lv['itl_ms']['p50'])} / {fmt(lv['itl_ms']['p95'])}",
                    f"{lv['errors']}/{lv['requests']}"]
        lines.append("| " + " | ".join(row) + " |")
    toks = []
    for name, e in eng.items():
        if e:
            toks.append(f"{name}: " + ", ".join(
                f"C={lv['concurrency']} {lv['tokens_per_request_mean']}" for lv in e["levels"]))
    served = []
    for name, e in eng.items():
        if e:
            ms_ = sorted({m for lv in e["levels"] + [e.get("prefix_test") or {}]
                          for m in lv.get("served_models", [])})
            served.append(f"{name}: {', '.join(ms_) or '—'} (requested {e.get('api_model')})")
    lines += ["", "Model named in the responses: " + "; ".join(served) + "."]
    lines += ["", "Mean completion tokens per request (EOS may stop a story early): "
              + "; ".join(toks) + "."]
    bg, noisy = [], False
    for name, e in eng.items():
        if not e:
            continue
        def tries(lv):
            n = lv.get("attempts") or 1
            return f" (attempt {n})" if n > 1 else ""
        parts = [f"C={lv['concurrency']} {fmt(lv.get('foreign_cpu'), 2)}{tries(lv)}"
                 for lv in e["levels"]]
        if e.get("prefix_test"):
            p = e["prefix_test"]
            parts.append(f"prefix {fmt(p.get('foreign_cpu'), 2)}{tries(p)}")
        noisy |= any((lv.get("foreign_cpu") or 0) > report["busy_limit"]
                     for lv in e["levels"] + [e.get("prefix_test") or {}])
        bg.append(f"{name}: " + ", ".join(parts))
    lines += ["", "Share of all CPU time used by other processes during each measurement "
              "(0 = quiet): " + "; ".join(bg) + "."]
    cl = []
    for name, e in eng.items():
        if e:
            cl.append(f"{name}: " + ", ".join(f"C={lv['concurrency']} "
                                              f"{fmt(lv.get('client_cpu'), 2)}"
                                              for lv in e["levels"]))
    lines += ["", "Share used by the load generator itself (it shares the cores): "
              + "; ".join(cl) + "."]
    died = sorted({lv["server_died"] for e in eng.values() if e
                   for lv in e["levels"] + [e.get("prefix_test") or {}] if lv.get("server_died")})
    for d in died:
        lines += ["", f"**Error: {d}.**"]
    if noisy:
        lines += ["", f"**Warning: other processes used more than {report['busy_limit']:.0%} "
                  "of the CPUs during some measurements; those figures are not meaningful.**"]
    pref = [(n, e["prefix_test"]) for n, e in eng.items() if e and e.get("prefix_test")]
    if pref:
        lines += ["", "Prefix test: one ~1,000-token system prompt sent twice in a row with "
                  "different user messages, max_tokens 8 (fresh server).", "",
                  "| engine | prompt tokens | first TTFT ms | second TTFT ms | second / first |",
                  "|---|---|---|---|---|"]
        for n, p in pref:
            pt = "/".join(str(x) for x in p.get("prompt_tokens") or [])
            ratio = p["ratio_second_over_first"]
            lines.append(f"| {n} | {pt or '—'} | {fmt(p['first_ttft_ms'])} | "
                         f"{fmt(p['second_ttft_ms'])} | "
                         f"{'—' if ratio is None else f'{ratio:.3f}'} |")
            if p.get("errors"):
                lines.append(f"| {n} errors | {'; '.join(map(str, p['errors']))} | | | |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2",
                    help="installed model name or a .gguf path")
    ap.add_argument("--concurrency", default="1,4,8,16,32")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="lantern,llama-server")
    ap.add_argument("--llama-np", default="per-level",
                    help="'per-level' (restart with -np C for each level) or a fixed N")
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--llama-extra", default="",
                    help="extra llama-server arguments, space separated")
    ap.add_argument("--lantern-port", type=int, default=18090)
    ap.add_argument("--llama-port", type=int, default=18091)
    ap.add_argument("--lantern-api-model", default=None,
                    help="model name in Lantern's API (default: MODEL; for a .gguf path, "
                         "the matching id in its /v1/models)")
    ap.add_argument("--no-prefix-test", dest="prefix_test", action="store_false")
    ap.add_argument("--out-dir", default=str(ROOT / "benches/results"))
    ap.add_argument("--busy-limit", type=float, default=0.15,
                    help="warn when the CPUs are busier than this before a server starts")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before starting each server, wait up to S seconds for the CPUs "
                         "to be quieter than --busy-limit")
    ap.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                    help="measure a level (or the prefix test) up to N more times while other "
                         "processes used more than --busy-limit of the CPUs during it")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGHUP, _exit_on_sigterm)
    args.conc = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.llama_extra = args.llama_extra.split()
    Server.wait_quiet_s, Server.busy_limit = args.wait_quiet, args.busy_limit
    if args.llama_np != "per-level":
        int(args.llama_np)
    model = model_path(args.model)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    report = {
        "date": now.isoformat(timespec="seconds"), "model": model.name, "model_path": str(model),
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
        "lantern_commit": commit, "concurrency": args.conc,
        "requests_per_client": args.requests_per_client, "max_tokens": args.max_tokens,
        "llama_np": args.llama_np, "busy_limit": args.busy_limit,
        "llama_np_note": ("restarted per level with -np C -c C*%d (one slot per client)"
                          % args.ctx_per_slot if args.llama_np == "per-level" else
                          "started once with -np %s -c %d" % (args.llama_np,
                                                              int(args.llama_np) * args.ctx_per_slot)),
        "engines": {},
    }
    for e in engines:
        if args.wait_quiet > 0:
            wait_quiet(args.busy_limit, args.wait_quiet)
        check_quiet(report, e, args.busy_limit)
        if e == "lantern":
            report["engines"]["lantern"] = bench_lantern(args, model)
        elif e in ("llama-server", "llama.cpp", "llamacpp"):
            report["engines"]["llama-server"] = bench_llama_server(args, model)
        else:
            sys.exit(f"unknown engine {e}")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{now.date().isoformat()}-serve-{model.stem.split('.')[0]}{args.tag}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
