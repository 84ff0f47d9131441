#!/usr/bin/env python3
"""Embeddings: Lantern's `/v1/embeddings` against sentence-transformers (PyTorch, CPU) on the
same all-MiniLM-L6-v2 files, same machine, same run.

  benches/embeddings/setup.sh        # a venv with sentence-transformers and httpx (once)
  benches/.work/st-venv/bin/python benches/embed_compare.py [--batches 1,8,64,256]
      [--threads 2] [--min-texts 512] [--hit-requests 500] [--wait-quiet 120]

Throughput: embeddings/s for batches of B short texts (8 to 16 tokens). sentence-transformers
runs in this process (`model.encode(texts, batch_size=B)`, torch limited to --threads);
Lantern is measured end to end over HTTP (one request of B texts at a time, JSON floats),
so its figure includes HTTP, JSON and tokenization. Every text is new to Lantern's
embedding cache (a fresh salt per measurement), so nothing is served from cache there.
Then the cache-hit latency over HTTP: one text, embedded once, then requested --hit-requests
times in a row (p50 / p99 ms, client-side).

Writes benches/results/<date>-embeddings-<model>.json and .md. Lantern binary: $LANTERN_BIN or
target/release/lantern (never built here).
"""
import argparse
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from serve_compare import Server, cpu_busy, cpu_name, wait_quiet  # noqa: E402

TOPICS = ["the weather", "a small cat", "tax filing", "river boats", "old maps", "green tea",
          "mountain roads", "city lights", "quiet libraries", "fast trains"]


def texts(n, salt):
    return [f"Note {salt}-{i}: a short remark about {TOPICS[i % len(TOPICS)]} today."
            for i in range(n)]


def model_dir(name):
    home = Path(os.environ.get("LANTERN_HOME") or
                Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "lantern")
    d = home / "models" / name
    if not (d / "model.safetensors").is_file():
        sys.exit(f"embedding model {name} is not installed (run models/fetch)")
    return d


def rounds_for(batch, min_texts):
    return max(3, -(-min_texts // batch))


def bench_st(model_path, batches, threads, min_texts):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_path), device="cpu")
    model.encode(texts(64, "warm"), batch_size=64)
    out = {}
    for b in batches:
        rounds = rounds_for(b, min_texts)
        batches_of = [texts(b, f"a{b}r{r}") for r in range(rounds)]
        t0 = time.perf_counter()
        for t in batches_of:
            model.encode(t, batch_size=b, convert_to_numpy=True)
        dt = time.perf_counter() - t0
        out[b] = {"embeddings_per_s": b * rounds / dt, "texts": b * rounds, "seconds": dt}
        print(f"[embed] sentence-transformers B={b}: {out[b]['embeddings_per_s']:.1f}/s",
              file=sys.stderr)
    return out, {"torch": torch.__version__,
                 "sentence_transformers": __import__("sentence_transformers").__version__}


def bench_lantern(binary, model, batches, threads, min_texts, hit_requests, port):
    out, hits = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        argv = [binary, "serve", "smollm2", "--port", str(port), "--threads", str(threads),
                "--db", str(Path(tmp) / "bench.db")]
        with Server("lantern", argv, port, "lantern-embeddings.log"):
            url = f"http://127.0.0.1:{port}/v1/embeddings"
            with httpx.Client(timeout=600) as client:
                def embed(items):
                    r = client.post(url, json={"model": model, "input": items,
                                               "encoding_format": "float"})
                    r.raise_for_status()
                    body = r.json()
                    assert len(body["data"]) == len(items)
                    return body
                embed(texts(64, "warm"))  # loads the model
                for b in batches:
                    rounds = rounds_for(b, min_texts)
                    # The same shape of text as sentence-transformers gets (the same token
                    # counts); new to this server, whose cache starts empty.
                    batches_of = [texts(b, f"b{b}r{r}") for r in range(rounds)]
                    t0 = time.perf_counter()
                    for t in batches_of:
                        body = embed(t)
                        assert body["cache"]["computed"] == b, body["cache"]
                    dt = time.perf_counter() - t0
                    out[b] = {"embeddings_per_s": b * rounds / dt, "texts": b * rounds,
                              "seconds": dt}
                    print(f"[embed] lantern B={b}: {out[b]['embeddings_per_s']:.1f}/s",
                          file=sys.stderr)
                one = ["a cached sentence"]
                embed(one)
                lat = []
                for _ in range(hit_requests):
                    t0 = time.perf_counter()
                    body = embed(one)
                    lat.append((time.perf_counter() - t0) * 1e3)
                    assert body["cache"]["memory_hits"] == 1, body["cache"]
                lat.sort()
                hits = {"requests": hit_requests,
                        "p50_ms": lat[len(lat) // 2],
                        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                        "mean_ms": statistics.fmean(lat)}
                print(f"[embed] cache hit p50 {hits['p50_ms']:.2f} ms, p99 {hits['p99_ms']:.2f} ms",
                      file=sys.stderr)
    return out, hits


def markdown(r):
    lines = [f"# {r['model']} — Lantern /v1/embeddings vs sentence-transformers ({r['date']})", "",
             f"CPU: {r['cpu']}, {r['cores']} cores; {r['threads']} threads each; "
             f"sentence-transformers {r['versions']['sentence_transformers']}, torch "
             f"{r['versions']['torch']} (in process); Lantern {r['lantern_commit']} over HTTP "
             f"(JSON floats, every text new to its cache). Short texts (8-16 tokens).", "",
             "| batch | Lantern emb/s | sentence-transformers emb/s | ratio |",
             "|---|---|---|---|"]
    for b in r["batches"]:
        lt, st = r["lantern"][str(b)], r["sentence_transformers"][str(b)]
        lines.append(f"| {b} | {lt['embeddings_per_s']:.1f} | {st['embeddings_per_s']:.1f} | "
                     f"{lt['embeddings_per_s'] / st['embeddings_per_s']:.2f}× |")
    h = r["cache_hit"]
    lines += ["", f"Cache hit over HTTP ({h['requests']} requests of one cached text, client-side): "
              f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms.", "",
              f"Background CPU busy before the runs: {r['background_cpu_busy']}.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-minilm")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-texts", type=int, default=512)
    ap.add_argument("--hit-requests", type=int, default=500)
    ap.add_argument("--wait-quiet", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=18092)
    ap.add_argument("--out-dir", default=str(ROOT / "benches/results"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    binary = os.environ.get("LANTERN_BIN", str(ROOT / "target/release/lantern"))
    if not Path(binary).is_file():
        sys.exit(f"{binary} is missing: cargo build --release first")
    path = model_dir(args.model)
    if args.wait_quiet:
        wait_quiet(0.15, args.wait_quiet)
    busy = cpu_busy()
    st, versions = bench_st(path, batches, args.threads, args.min_texts)
    lt, hits = bench_lantern(binary, args.model, batches, args.threads, args.min_texts,
                             args.hit_requests, args.port)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"model": args.model, "date": now.isoformat(timespec="seconds"), "cpu": cpu_name(),
              "cores": os.cpu_count(), "threads": args.threads, "batches": batches,
              "lantern_commit": commit, "versions": versions, "background_cpu_busy": busy,
              "lantern": {str(k): v for k, v in lt.items()},
              "sentence_transformers": {str(k): v for k, v in st.items()},
              "ratio": {str(b): lt[b]["embeddings_per_s"] / st[b]["embeddings_per_s"]
                        for b in batches},
              "cache_hit": hits}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{now.date()}-embeddings-{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()
