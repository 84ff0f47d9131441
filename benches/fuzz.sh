#!/usr/bin/env bash
# The fuzz targets of tests/fuzz.rs for SECONDS each (default 600; CI runs 30), two at a time,
# with the results in benches/results/DATE-fuzz.{json,md}: cases run, failures (0, or the run
# stops with proptest's shrunk input) and the test process's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
out=benches/results/$(date -u +%F)-fuzz
log=$(mktemp)
LANTERN_FUZZ_SECONDS=$seconds cargo test --release --locked --test fuzz -- --nocapture --test-threads=2 2>&1 | tee "$log"
python3 - "$log" "$out" "$seconds" <<'PY'
import json, re, sys
log, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
text = open(log).read()
rows = [{"target": m[0], "cases": int(m[1]), "seconds": seconds, "panics": 0, "peak_rss_mib": int(m[2])}
        for m in re.findall(r"fuzz (\w+): (\d+) cases in [^,]+, peak RSS (\d+) MiB", text)]
assert len(rows) == 4 and "test result: ok. 4 passed" in text, text[-2000:]
json.dump({"seconds_per_target": seconds, "targets": rows}, open(out + ".json", "w"), indent=1)
with open(out + ".md", "w") as f:
    f.write(f"# Fuzzing ({seconds:.0f} s per target, `benches/fuzz.sh`)\n\n")
    f.write("| target | cases | panics | peak RSS of the test process (MiB) |\n|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['target']} | {r['cases']} | {r['panics']} | {r['peak_rss_mib']} |\n")
print(open(out + ".md").read())
PY
