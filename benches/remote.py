#!/usr/bin/env python3
"""What a remote backend costs: the same requests sent straight to a `lantern serve` (the
"remote engine") and through a second one that serves it as `edge/MODEL`, interleaved in one
run. Single streams: time to first token and decode tok/s; then N concurrent streams: total
generated tok/s. The answers must be identical (greedy): the hop changes the timing only.
Writes benches/results/<date>-remote-<model>.json and .md.

  python3 benches/remote.py [MODEL] [--reps 10] [--max-tokens 64] [--streams 16]

Binary: $LANTERN_BIN or target/release/lantern ($CARGO_TARGET_DIR respected); never built here.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speculative import lantern_bin, stream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def serve(name, model, threads, settings=""):
    home = Path(f"/tmp/lantern-remote-bench-{name}")
    home.mkdir(exist_ok=True)
    models = Path(os.environ.get("LANTERN_HOME", Path.home() / ".local/share/lantern")) / "models"
    if not (home / "models").exists():
        (home / "models").symlink_to(models)
    (home / "settings.toml").write_text(settings)
    args = [lantern_bin(), "serve", model, "--home", str(home), "--port", "0",
            "--threads", str(threads), "--response-cache-mib", "0", "--prompt-lookup", "false"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "http://127.0.0.1:" not in line:
        proc.kill()
        sys.exit(f"lantern serve did not start: {' '.join(args)}")
    return proc, line.split("listening on ")[1].strip().removesuffix("/v1")


def at_once(base, model, n, max_tokens):
    """Total generated tok/s of n streams at once."""
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda i: stream((base,), model, f"Count from {i} to {i + 40}.", max_tokens), range(n)))
    return sum(r[1] for r in runs) / (time.perf_counter() - began)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default=str(ROOT / "benches" / "results"))
    a = ap.parse_args()
    remote, remote_base = serve("remote", a.model, a.threads)
    front, front_base = serve("front", a.model, 1, f"""
[[backends]]
name = "edge"
url = "{remote_base}/v1"
models = ["{a.model}"]
""")
    routes = {"direct": (remote_base, a.model), "through": (front_base, f"edge/{a.model}")}
    prompt = "Explain in a few sentences why the sky is blue."
    single = {k: {"ttft_ms": [], "tok_s": []} for k in routes}
    answers = {}
    try:
        for rep in range(a.reps + 1):
            for name, (base, model) in routes.items():
                text, _, tps, ttft = stream((base,), model, prompt, a.max_tokens)
                answers.setdefault(name, text)
                if rep > 0:  # the first is a warm-up
                    single[name]["ttft_ms"].append(ttft)
                    single[name]["tok_s"].append(tps)
        many = {k: [] for k in routes}
        for _ in range(3):
            for name, (base, model) in routes.items():
                many[name].append(at_once(base, model, a.streams, a.max_tokens))
    finally:
        front.kill()
        remote.kill()
    med = {k: {m: statistics.median(v) for m, v in single[k].items()} for k in routes}
    tput = {k: statistics.median(v) for k, v in many.items()}
    result = {
        "model": a.model, "reps": a.reps, "max_tokens": a.max_tokens, "streams": a.streams,
        "identical_answers": answers["direct"] == answers["through"],
        "single": single, "median": med, "concurrent_tok_s": many, "median_concurrent": tput,
        "added_ttft_ms": med["through"]["ttft_ms"] - med["direct"]["ttft_ms"],
        "decode_ratio": med["through"]["tok_s"] / med["direct"]["tok_s"],
        "concurrent_ratio": tput["through"] / tput["direct"],
    }
    stamp = datetime.date.today().isoformat()
    out = Path(a.out_dir) / f"{stamp}-remote-{a.model}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# A remote backend's cost on {a.model}: straight to the engine vs through a second "
        f"Lantern serving it as `edge/{a.model}` (loopback, same machine), interleaved, greedy",
        "", f"`python3 benches/remote.py {a.model} --reps {a.reps} --max-tokens {a.max_tokens} "
        f"--streams {a.streams}`", "",
        "| route | TTFT median (ms) | decode tok/s median | "
        f"{a.streams} streams, total tok/s (median of 3) |", "|---|---:|---:|---:|",
    ]
    for k in routes:
        lines.append(f"| {k} | {med[k]['ttft_ms']:.1f} | {med[k]['tok_s']:.1f} | {tput[k]:.1f} |")
    lines += ["", f"Added time to first token: {result['added_ttft_ms']:.1f} ms; decode "
              f"{result['decode_ratio']:.3f}x; {a.streams} streams {result['concurrent_ratio']:.3f}x; "
              f"same answer: {'yes' if result['identical_answers'] else 'NO'}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
