#!/usr/bin/env python3
"""Prompt lookup (speculative decoding with drafts from the prompt): decode speed with and
without, on an answer that repeats its prompt (a code edit) and on free-form text.

Two `lantern serve` processes on loopback, one with `--prompt-lookup false`, the same model and
threads; the requests alternate between them (one at a time, greedy, streamed), so a noisy
neighbour slows both alike. Decode tok/s is (completion tokens - 1) over the time from the first
streamed token to the last. The answers must be identical: prompt lookup changes the speed only.
Writes benches/results/<date>-speculative-<model>.json and .md.

  python3 benches/speculative.py [MODEL] [--threads 2] [--reps 5] [--max-tokens 192]

Binary: $LANTERN_BIN or target/release/lantern ($CARGO_TARGET_DIR respected); never built here.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CODE = """Rewrite this Python code with the variable x renamed to value. Answer with the code only.

```python
def area(x):
    return x * x * 3.14159

def perimeter(x):
    return 2 * x * 3.14159

def scaled(x, factor):
    return area(x) * factor + perimeter(x) * factor

def describe(x):
    print("area", area(x), "perimeter", perimeter(x))
```"""

PROMPTS = {
    "code edit (answer repeats the prompt)": CODE,
    "free-form": "Write a short story about a lighthouse keeper and a storm.",
}


def lantern_bin():
    if os.environ.get("LANTERN_BIN"):
        return os.environ["LANTERN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "lantern")


def serve(model, threads, lookup):
    home = Path(f"/tmp/lantern-spec-bench-{lookup}")
    home.mkdir(exist_ok=True)
    models = Path(os.environ.get("LANTERN_HOME", Path.home() / ".local/share/lantern")) / "models"
    if not (home / "models").exists():
        (home / "models").symlink_to(models)
    args = [lantern_bin(), "serve", model, "--home", str(home), "--port", "0",
            "--threads", str(threads), "--response-cache-mib", "0",
            "--prompt-lookup", "true" if lookup else "false"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:
        if "http://127.0.0.1:" in line:
            port = line.split("http://127.0.0.1:")[1].split("/")[0].split()[0]
            token = (home / "admin-token").read_text().strip()
            return proc, (f"http://127.0.0.1:{int(port)}", token)
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit(f"lantern serve did not start: {' '.join(args)}")


def stream(server, model, prompt, max_tokens):
    """(text, completion tokens, decode tok/s, time to first token in ms) of one greedy stream."""
    base = server[0]
    body = json.dumps({
        "model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", body,
                                 {"Content-Type": "application/json", "Cache-Control": "no-store"})
    sent = time.perf_counter()
    text, first, last, tokens = "", None, None, 0
    with urllib.request.urlopen(req) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c["delta"].get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text += c["delta"]["content"]
    tps = (tokens - 1) / (last - first) if last and last > first else 0.0
    return text, tokens, tps, (first - sent) * 1e3 if first else None


def engine_figures(server):
    base, token = server
    req = urllib.request.Request(f"{base}/api/engine", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        models = json.load(r)["models"]
    return models[0]["engine"] if models else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out-dir", default=str(ROOT / "benches" / "results"))
    a = ap.parse_args()
    servers = {flag: serve(a.model, a.threads, flag) for flag in (False, True)}
    results = {}
    try:
        for name, prompt in PROMPTS.items():
            runs = {False: [], True: []}
            answers = {}
            before = engine_figures(servers[True][1])
            for rep in range(a.reps + 1):
                for flag in (False, True):
                    text, tokens, tps, _ = stream(servers[flag][1], a.model, prompt, a.max_tokens)
                    answers.setdefault(flag, text)
                    if answers[flag] != text:
                        sys.exit(f"{name}: greedy answers differ between repetitions")
                    if rep > 0:  # the first is a warm-up
                        runs[flag].append(tps)
            after = engine_figures(servers[True][1])
            drafted = after["drafted_tokens"] - before["drafted_tokens"]
            accepted = after["accepted_tokens"] - before["accepted_tokens"]
            plain, drafting = statistics.median(runs[False]), statistics.median(runs[True])
            results[name] = {
                "identical_answers": answers[False] == answers[True],
                "completion_tokens": tokens,
                "plain_tok_s": runs[False], "prompt_lookup_tok_s": runs[True],
                "median_plain": plain, "median_prompt_lookup": drafting,
                "speedup": drafting / plain if plain else None,
                "drafted_tokens": drafted, "accepted_tokens": accepted,
                "acceptance": accepted / drafted if drafted else None,
            }
            print(f"{name}: {plain:.1f} -> {drafting:.1f} tok/s ({drafting / plain:.2f}x), "
                  f"drafted {drafted}, accepted {accepted}, "
                  f"identical {answers[False] == answers[True]}", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.kill()
    stamp = datetime.date.today().isoformat()
    out = Path(a.out_dir) / f"{stamp}-speculative-{a.model}"
    meta = {"model": a.model, "threads": a.threads, "reps": a.reps,
            "max_tokens": a.max_tokens, "results": results}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = [f"# Prompt lookup on {a.model}, {a.threads} threads, greedy, "
             f"median of {a.reps} (`python3 benches/speculative.py {a.model} "
             f"--threads {a.threads} --reps {a.reps}`)", "",
             "| prompt | plain tok/s | prompt lookup tok/s | speed-up | drafted | accepted "
             "| same answer |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_plain']:.1f} | {r['median_prompt_lookup']:.1f} "
                     f"| {r['speedup']:.2f}x | {r['drafted_tokens']} | {r['accepted_tokens']} "
                     f"| {'yes' if r['identical_answers'] else 'NO'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
