#!/usr/bin/env python3
"""Lantern against llama.cpp on the same GGUF, in the same run.

Builds llama.cpp's llama-bench from the llama-cpp-python sdist (benches/llamacpp/build.sh), runs
pp512 and tg128 with 1 and 2 threads (5 repetitions, llama-bench's definitions) for both engines,
and writes benches/results/<date>-<model>.json and .md with the ratios Lantern / llama.cpp.

Usage: python3 benches/compare.py [MODEL_NAME_OR_GGUF] [--reps N] [--threads 1,2]
Run it on a quiet machine: the figures are only comparable within one run.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def llama_cpp(model, threads, reps):
    out = ROOT / "benches/.work/llama-bench.json"
    env = dict(os.environ, THREADS=",".join(map(str, threads)), REPS=str(reps))
    subprocess.run(["bash", str(ROOT / "benches/llamacpp/bench.sh"), str(model), str(out)],
                   check=True, env=env)
    rows = {}
    for r in json.loads(out.read_text()):
        test = "pp" if r["n_prompt"] > 0 and r["n_gen"] == 0 else "tg"
        rows[(test, r["n_threads"])] = {"avg_ts": r["avg_ts"], "stddev_ts": r["stddev_ts"],
                                        "n": r["n_prompt"] or r["n_gen"], "build": r.get("build_commit")}
    return rows


def lantern(model, threads, reps):
    subprocess.run(["cargo", "build", "--release", "--bench", "engine"], cwd=ROOT, check=True)
    rows = {}
    for t in threads:
        out = subprocess.run(
            ["cargo", "bench", "--bench", "engine", "--", "--model", str(model),
             "--threads", str(t), "--reps", str(reps)],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
        d = json.loads(out.strip().splitlines()[-1])
        for test in ("pp", "tg"):
            rows[(test, t)] = {k: d[test][k] for k in ("avg_ts", "stddev_ts", "n")}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    model = model_path(args.model)
    ours = lantern(model, threads, args.reps)
    theirs = llama_cpp(model, threads, args.reps)
    results = []
    for (test, t), o in sorted(ours.items()):
        l = theirs.get((test, t))
        results.append({
            "test": f"{test}{o['n']}", "threads": t,
            "lantern_ts": round(o["avg_ts"], 2), "lantern_sd": round(o["stddev_ts"], 2),
            "llamacpp_ts": l and round(l["avg_ts"], 2), "llamacpp_sd": l and round(l["stddev_ts"], 2),
            "ratio": l and round(o["avg_ts"] / l["avg_ts"], 3),
        })
    stamp = datetime.datetime.now(datetime.timezone.utc)
    meta = {"date": stamp.isoformat(timespec="seconds"), "model": model.name, "cpu": cpu_name(),
            "cores": os.cpu_count(), "reps": args.reps,
            "lantern_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                             capture_output=True, text=True).stdout.strip(),
            "llamacpp": "llama-cpp-python 0.3.36 sdist, llama-bench, GGML_NATIVE (see build.sh)"}
    base = ROOT / "benches/results" / f"{stamp:%Y-%m-%d}-{model.stem}"
    base.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    lines = [f"# {model.name} — Lantern vs llama.cpp ({meta['date']})", "",
             f"CPU: {meta['cpu']}, {meta['cores']} cores; mean ± sd of {args.reps} runs, tokens/s; "
             f"Lantern {meta['lantern_commit']}.", "",
             "| test | threads | Lantern | llama.cpp | ratio |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['test']} | {r['threads']} | {r['lantern_ts']} ± {r['lantern_sd']} | "
                     f"{r['llamacpp_ts']} ± {r['llamacpp_sd']} | {r['ratio']}× |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
