#!/usr/bin/env python3
"""What constrained decoding costs: decode throughput at batch B with and without a grammar.

One `lantern serve` on MODEL; each round sends B concurrent chat requests of exactly
--max-tokens tokens each, either free (the end-of-turn tokens biased away so every answer runs
its full length) or under a JSON Schema whose one string field must be longer than the answer
can get (so the grammar is live at every step and never ends the answer early). The rounds
alternate, --rounds of each; the figure is generated tokens / wall time of the round, and the
engine's own decode rate (`timings.predicted_per_second`, summed over the batch). Writes
benches/results/<date>-constrained-<model>.json and .md.

  .venv/bin/python benches/constrained.py [MODEL] [--batch 8] [--max-tokens 128] [--rounds 5]

Binary: $LANTERN_BIN or target/release/lantern (not built here).
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
    "additionalProperties": False,
}


def start(binary, model):
    db = Path(tempfile.mkdtemp()) / "bench.db"
    proc = subprocess.Popen([binary, "serve", model, "--port", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def one(client, base, body):
    r = client.post(f"{base}/chat/completions", json=body, headers={"cache-control": "no-store"},
                    timeout=600)
    r.raise_for_status()
    return r.json()


def round_(client, base, model, batch, max_tokens, constrained, seed, bias):
    bodies = []
    for i in range(batch):
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed + i,
                "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}]}
        if constrained:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "story", "schema": SCHEMA, "strict": True}}
        else:
            body["logit_bias"] = bias
        bodies.append(body)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
        answers = list(pool.map(lambda b: one(client, base, b), bodies))
    wall = time.perf_counter() - began
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    engine_rate = sum(a["timings"]["predicted_per_second"] or 0 for a in answers)
    reasons = sorted({a["choices"][0]["finish_reason"] for a in answers})
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "engine_decode_per_s": engine_rate, "finish_reasons": reasons}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out-dir", default=str(ROOT / "benches/results"))
    a = p.parse_args()
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    proc, base = start(binary, a.model)
    try:
        client = httpx.Client(timeout=600)
        # The end-of-turn ids (Ollama's /api/show lists them), biased away in the free rounds.
        show = client.post(base.removesuffix("/v1") + "/api/show", json={"model": a.model}).json()
        bias = {str(t): -100 for t in show["model_info"]["lantern.stop_token_ids"]}
        # Warm both paths (the grammar compiler is built on first use).
        round_(client, base, a.model, a.batch, 8, True, 0, bias)
        round_(client, base, a.model, a.batch, 8, False, 0, bias)
        runs = {"free": [], "constrained": []}
        for r in range(a.rounds):
            for kind in ("free", "constrained"):
                runs[kind].append(round_(client, base, a.model, a.batch, a.max_tokens,
                                         kind == "constrained", 100 * r, bias))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    eng = {k: statistics.median(x["engine_decode_per_s"] for x in v) for k, v in runs.items()}
    cost = 1 - med["constrained"] / med["free"]
    date = datetime.date.today().isoformat()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": a.model, "batch": a.batch, "max_tokens": a.max_tokens, "rounds": a.rounds,
              "runs": runs, "median_tokens_per_s": med, "median_engine_decode_per_s": eng,
              "cost": cost, "command": " ".join(sys.argv)}
    stem = out / f"{date}-constrained-{a.model}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Constrained decoding cost: {a.model}, batch {a.batch}, {a.max_tokens} tokens per answer",
        "",
        f"`{' '.join(sys.argv)}` — median of {a.rounds} alternating rounds.",
        "",
        "| | tokens/s (wall) | engine decode tok/s (sum) | finish reasons |",
        "|---|---|---|---|",
    ]
    for k in ("free", "constrained"):
        reasons = sorted({r for x in runs[k] for r in x["finish_reasons"]})
        lines.append(f"| {k} | {med[k]:.1f} | {eng[k]:.1f} | {', '.join(reasons)} |")
    lines += ["", f"Cost of the grammar: **{cost * 100:.1f} %** of decode throughput (wall)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
