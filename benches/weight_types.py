#!/usr/bin/env python3
"""Every GGUF weight type Lantern's kernels cover, against llama.cpp, in one run.

`lantern quantize` writes the model in each type (into a scratch data directory), then for each
file and thread count: `lantern bench` (pp512, tg128, and the read-bandwidth ceiling it
measures) and llama.cpp's `llama-bench` (built by benches/llamacpp/build.sh) on the same file.
The same-run ratio Lantern / llama.cpp and each engine's share of the read-bandwidth roofline
for tg128 go to benches/results/<date>-types-<model>.json and .md. Real files (gemma3's Q4_K_M)
can be added as they are with --files.

Usage: python3 benches/weight_types.py [MODEL] [--types q4_k,q5_k,...] [--threads 1,2] [--reps 3]
                                [--files NAME=PATH ...]
Run it on a quiet machine: the figures are only comparable within one run.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from compare import cpu_name, model_path  # noqa: E402

TYPES = "q4_k,q5_k,q6_k,q4_0,q5_0,q5_1,q3_k,q2_k,q4_1,q8_0"
# cargo's own rule: a shared target directory wins over the checkout's.
LANTERN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/lantern"


def lantern(target, threads, reps, extra=()):
    out = subprocess.run(
        [str(LANTERN), "bench", str(target), "--threads", str(threads), "--reps", str(reps),
         "--output", "json", "--no-store", *extra],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    speeds = {s["test"]: s for s in r["speeds"]}
    batches = {t: s["tokens_per_second"]["mean"] for t, s in speeds.items() if "@b" in t}
    bw_bound = r["ceilings"]["read_bandwidth_bytes_per_s"] / r["model"]["weight_bytes_per_token"]
    return {
        "pp": speeds["pp512"]["tokens_per_second"],
        "pp_roofline": speeds["pp512"]["roofline_fraction"],
        "tg": speeds["tg128"]["tokens_per_second"],
        "tg_bandwidth_bound": bw_bound,
        "quantization": r["model"]["quantization"],
        "peak_rss_bytes": r.get("peak_rss_bytes"),
        "batches": batches,
        "path": r["model"].get("path"),
    }


def llama_cpp(bin_path, path, threads, reps):
    run = subprocess.run(
        [bin_path, "-m", str(path), "-p", "512", "-n", "128", "-t", ",".join(map(str, threads)),
         "-r", str(reps), "-o", "json"],
        capture_output=True, text=True)
    if run.returncode != 0:
        # Synthetic files carry no vocabulary, which llama.cpp's loader requires.
        print(f"llama-bench could not run {path}: {run.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return {}
    out = run.stdout
    rows = {}
    for r in json.loads(out):
        test = "pp" if r["n_prompt"] > 0 and r["n_gen"] == 0 else "tg"
        rows[(test, r["n_threads"])] = {"mean": r["avg_ts"], "sd": r["stddev_ts"]}
    return rows


def scaling_table(results):
    """Each engine's speed-up from its fewest to its most threads, per file and test."""
    by = {}
    for r in results:
        by.setdefault((r["file"], r["test"]), {})[r["threads"]] = r
    lines = []
    for (file, test), rows in by.items():
        if len(rows) < 2:
            continue
        lo, hi = rows[min(rows)], rows[max(rows)]
        ours = hi["lantern_ts"] / lo["lantern_ts"]
        theirs = (hi["llamacpp_ts"] / lo["llamacpp_ts"]
                  if hi.get("llamacpp_ts") and lo.get("llamacpp_ts") else None)
        lines.append(f"| {file} | {test} | {min(rows)}→{max(rows)} | {ours:.2f}× | "
                     + (f"{theirs:.2f}× |" if theirs else "– |"))
    if not lines:
        return []
    return ["", "Scaling with threads (tokens/s at the most threads over the fewest):", "",
            "| file | test | threads | Lantern | llama.cpp |", "|---|---|---|---|---|"] + lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", nargs="*", default=[], help="NAME=PATH of real files to add")
    ap.add_argument("--synthetic", default="", help="a synthetic shape (1b) to add, per type")
    ap.add_argument("--synthetic-types", default="q4_k,q5_k,q6_k,q4_0")
    ap.add_argument("--synthetic-threads", default="2")
    ap.add_argument("--name", default="", help="the results' name (default: types-MODEL)")
    ap.add_argument("--rows", nargs="*", default=[],
                    help="render these logged result rows (one JSON object a line) as well: a "
                         "run cut short keeps its figures")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    subprocess.run(["cargo", "build", "--release", "--bin", "lantern"], cwd=ROOT, check=True)
    llama_bench = subprocess.run(["bash", str(ROOT / "benches/llamacpp/build.sh")], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]

    scratch = Path(tempfile.mkdtemp(prefix="lantern-types-"))
    home = scratch / "home"
    source = model_path(args.model)
    (home / "models" / args.model).mkdir(parents=True)
    (home / "models" / args.model / source.name).symlink_to(source)
    types = [t for t in args.types.split(",") if t]
    if types:
        subprocess.run([str(LANTERN), "quantize", args.model, "--to", ",".join(types), "--home",
                        str(home)], check=True)
    files = []
    for t in types:
        found = sorted((home / "models" / f"{args.model}-{t}").glob("*.gguf"))
        if not found:
            sys.exit(f"lantern quantize wrote no {args.model}-{t}")
        files.append((f"{args.model} → {t.upper()}", found[0]))
    for spec in args.files:
        name, _, path = spec.partition("=")
        files.append((name, Path(path)))

    runs = [(name, path, threads, ("--batches", "1")) for name, path in files]
    if args.synthetic:
        keep = scratch / "synthetic"
        for q in args.synthetic_types.split(","):
            runs.append((f"synthetic:{args.synthetic} {q.upper()}", (args.synthetic, q),
                         [int(t) for t in args.synthetic_threads.split(",")],
                         ("--batches", "1,8", "--quantization", q, "--keep-synthetic", str(keep))))
    results = []
    for log in args.rows:
        for line in Path(log).read_text().splitlines():
            if line.startswith("{") and '"file"' in line:
                results.append(json.loads(line))
    for name, path, run_threads, extra in runs:
        print(f"== {name}", file=sys.stderr)
        if isinstance(path, tuple):
            # Lantern writes the seeded synthetic file first; llama.cpp then reads the same one.
            first = lantern(f"synthetic:{path[0]}", run_threads[0], args.reps, extra)
            found = sorted((scratch / "synthetic" / f"{path[0]}-{path[1]}").glob("*.gguf"))
            path, cached = found[0], {run_threads[0]: first}
        else:
            cached = {}
        theirs = llama_cpp(llama_bench, path, run_threads, args.reps)
        for t in run_threads:
            ours = cached.get(t) or lantern(path, t, args.reps, extra[:2])
            for test in ("pp", "tg"):
                o, l = ours[test], theirs.get((test, t))
                row = {
                    "file": name, "quantization": ours["quantization"],
                    "test": "pp512" if test == "pp" else "tg128", "threads": t,
                    "lantern_ts": round(o["mean"], 2), "lantern_sd": round(o["sd"], 2),
                    "llamacpp_ts": l and round(l["mean"], 2),
                    "llamacpp_sd": l and round(l["sd"], 2),
                    "ratio": l and round(o["mean"] / l["mean"], 3),
                }
                if test == "tg":
                    bound = ours["tg_bandwidth_bound"]
                    row["bandwidth_bound_ts"] = round(bound, 1)
                    row["lantern_bandwidth_share"] = round(o["mean"] / bound, 3)
                    row["llamacpp_bandwidth_share"] = l and round(l["mean"] / bound, 3)
                    b1, b8 = ours["batches"].get("tg32@b1"), ours["batches"].get("tg32@b8")
                    if b1 and b8:
                        row["lantern_b8_over_b1"] = round(b8 / b1, 2)
                else:
                    row["lantern_compute_share"] = round(ours["pp_roofline"], 3)
                results.append(row)
                print(json.dumps(row), file=sys.stderr)

    stamp = datetime.datetime.now(datetime.timezone.utc)
    meta = {"date": stamp.isoformat(timespec="seconds"), "model": args.model, "cpu": cpu_name(),
            "cores": os.cpu_count(), "reps": args.reps,
            "lantern_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                             capture_output=True, text=True).stdout.strip(),
            "llamacpp": "llama-cpp-python 0.3.36 sdist, llama-bench, GGML_NATIVE (build.sh)",
            "command": "python3 benches/weight_types.py " + " ".join(sys.argv[1:])}
    base = ROOT / "benches/results" / f"{stamp:%Y-%m-%d}-{args.name or 'types-' + args.model}"
    base.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    lines = [f"# Weight types — Lantern vs llama.cpp, same run ({meta['date']})", "",
             f"CPU: {meta['cpu']}, {meta['cores']} cores; mean ± sd of {args.reps} runs, "
             f"tokens/s; Lantern {meta['lantern_commit']}; `{meta['command']}`.",
             "Share: of the read-bandwidth roofline (tg128; the bandwidth Lantern measures in "
             "the same run over the bytes one token reads) or of Lantern's per-type compute "
             "roofline (pp512).", "",
             "| file | test | threads | Lantern | llama.cpp | ratio | Lantern share | llama.cpp share |",
             "|---|---|---|---|---|---|---|---|"]
    lines_b8 = ["", "Lantern's aggregate decode at batch 8 over batch 1 (tg32@b8 / tg32@b1):", "",
                "| file | threads | b8 / b1 |", "|---|---|---|"]
    for r in results:
        if r.get("lantern_b8_over_b1"):
            lines_b8.append(f"| {r['file']} | {r['threads']} | {r['lantern_b8_over_b1']}× |")
        if r["test"] == "tg128":
            shares = f"{r['lantern_bandwidth_share']:.0%} of {r['bandwidth_bound_ts']} | " + (
                f"{r['llamacpp_bandwidth_share']:.0%}" if r["llamacpp_bandwidth_share"] else "–")
        else:
            shares = f"{r['lantern_compute_share']:.0%} (compute) | –"
        if r["llamacpp_ts"] is None:
            r = {**r, "llamacpp_ts": "–", "llamacpp_sd": "–", "ratio": "–"}
        lines.append(f"| {r['file']} | {r['test']} | {r['threads']} | {r['lantern_ts']} ± "
                     f"{r['lantern_sd']} | {r['llamacpp_ts']} ± {r['llamacpp_sd']} | "
                     f"{r['ratio']}× | {shares} |")
    if len(lines_b8) > 5:
        lines += lines_b8
    lines += scaling_table(results)
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
