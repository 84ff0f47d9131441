#!/usr/bin/env python3
"""Speculative decoding: decode speed without it, with prompt lookup (drafts from the prompt)
and, given `--draft DRAFT`, with a draft model (alone and beside prompt lookup), on an answer
that repeats its prompt (a code edit) and on free-form text.

One `lantern serve` process on loopback per setting, the same model and threads; the requests
go round them (one at a time, greedy, streamed), so a noisy neighbour slows all alike. Decode
tok/s is (completion tokens - 1) over the time from the first streamed token to the last. The
answers must be identical: speculative decoding changes the speed only. Writes
benches/results/<date>-speculative-<model>.json and .md.

  python3 benches/speculative.py [MODEL] [--draft DRAFT] [--threads 2] [--reps 5]
      [--max-tokens 192]

MODEL and DRAFT: installed names or .gguf paths (a pair that shares a tokenizer, for example
`lantern quantize smollm2 --to f16`'s file drafted by smollm2).

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


def serve(model, threads, setting, flags):
    home = Path(f"/tmp/lantern-spec-bench-{setting.replace(' ', '-').replace('+', '-')}")
    home.mkdir(exist_ok=True)
    models = Path(os.environ.get("LANTERN_HOME", Path.home() / ".local/share/lantern")) / "models"
    if not (home / "models").exists():
        (home / "models").symlink_to(models)
    args = [lantern_bin(), "serve", model, "--home", str(home), "--port", "0",
            "--threads", str(threads), "--response-cache-mib", "0", *flags]
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
    ap.add_argument("--draft", help="a draft model for MODEL (same tokenizer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out-dir", default=str(ROOT / "benches" / "results"))
    a = ap.parse_args()
    settings = {"plain": ["--prompt-lookup", "false"], "prompt lookup": ["--prompt-lookup", "true"]}
    if a.draft:
        settings["draft model"] = ["--prompt-lookup", "false", "--draft", a.draft]
        settings["both"] = ["--prompt-lookup", "true", "--draft", a.draft]
    servers = {name: serve(a.model, a.threads, name, flags) for name, flags in settings.items()}
    served = Path(a.model).stem if a.model.endswith(".gguf") else a.model
    results = {}
    try:
        for name, prompt in PROMPTS.items():
            runs = {s: [] for s in settings}
            answers = {}
            before = {s: engine_figures(servers[s][1]) for s in settings}
            for rep in range(a.reps + 1):
                for s in settings:
                    text, tokens, tps, _ = stream(servers[s][1], served, prompt, a.max_tokens)
                    answers.setdefault(s, text)
                    if answers[s] != text:
                        sys.exit(f"{name}: greedy answers differ between repetitions")
                    if rep > 0:  # the first is a warm-up
                        runs[s].append(tps)
            plain = statistics.median(runs["plain"])
            row = {"completion_tokens": tokens, "median_plain": plain, "settings": {}}
            for s in settings:
                after = engine_figures(servers[s][1])
                drafted = after["drafted_tokens"] - before[s]["drafted_tokens"]
                accepted = after["accepted_tokens"] - before[s]["accepted_tokens"]
                median = statistics.median(runs[s])
                row["settings"][s] = {
                    "identical_answer": answers[s] == answers["plain"],
                    "tok_s": runs[s], "median": median,
                    "speedup": median / plain if plain else None,
                    "drafted_tokens": drafted, "accepted_tokens": accepted,
                    "acceptance": accepted / drafted if drafted else None,
                }
                print(f"{name} / {s}: {median:.1f} tok/s ({median / plain:.2f}x), drafted "
                      f"{drafted}, accepted {accepted}, same answer "
                      f"{answers[s] == answers['plain']}", flush=True)
            results[name] = row
    finally:
        for proc, _ in servers.values():
            proc.kill()
    stamp = datetime.date.today().isoformat()
    label = (Path(a.model).stem if a.model.endswith(".gguf") else a.model).replace(".", "-")
    if a.draft:
        label += "-draft-" + (Path(a.draft).stem if a.draft.endswith(".gguf") else a.draft)
    out = Path(a.out_dir) / f"{stamp}-speculative-{label.replace('.', '-')}"
    meta = {"model": a.model, "draft": a.draft, "threads": a.threads, "reps": a.reps,
            "max_tokens": a.max_tokens, "results": results}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    draft = f" --draft {a.draft}" if a.draft else ""
    lines = [f"# Speculative decoding on {label}, {a.threads} threads, greedy, decode tok/s, "
             f"median of {a.reps} (`python3 benches/speculative.py {a.model}{draft} "
             f"--threads {a.threads} --reps {a.reps}`)", "",
             "| prompt | setting | tok/s | speed-up | drafted | accepted | same answer |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        for s, v in r["settings"].items():
            lines.append(f"| {name} | {s} | {v['median']:.1f} | {v['speedup']:.2f}x "
                         f"| {v['drafted_tokens']} | {v['accepted_tokens']} "
                         f"| {'yes' if v['identical_answer'] else 'NO'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
