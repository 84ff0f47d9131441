#!/usr/bin/env bash
# Usage: bench.sh MODEL.gguf OUT.json
# Runs llama-bench (pp512 + tg128; mean ± sd over REPS repetitions) and writes
# its JSON output to OUT.json. Env: THREADS (default 1,2), REPS (default 5).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 MODEL.gguf OUT.json" >&2
  exit 2
fi
MODEL="$1"
OUT="$2"
THREADS="${THREADS:-1,2}"
REPS="${REPS:-5}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[[ -f "$MODEL" ]] || { echo "model not found: $MODEL" >&2; exit 1; }

BIN="$("$HERE/build.sh" | tail -n 1)"

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
"$BIN" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r "$REPS" -o json > "$tmp"
mkdir -p "$(dirname "$OUT")"
mv "$tmp" "$OUT"
trap - EXIT
echo "wrote $OUT" >&2
