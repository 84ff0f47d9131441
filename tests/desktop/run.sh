#!/usr/bin/env bash
# The desktop app under Xvfb, as a user starts it: the window opens on the UI its in-process
# server serves (screenshot), the page reaches the app over IPC, a chat request made in the
# window is in the request log after the app quits (a clean shutdown flushes it), and the exit
# code is 0. Usage: tests/desktop/run.sh PATH/TO/lantern-desktop
set -euo pipefail
bin=$(realpath "$1")
out=$(realpath -m "${DESKTOP_OUT:-ui/test-results/desktop}")
mkdir -p "$out"
rm -f "$out"/*
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A data directory of its own, with the installed default model linked in.
models="${LANTERN_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/lantern}/models"
mkdir "$work/models"
ln -s "$models/smollm2" "$work/models/smollm2"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

export APP="$bin" WORK="$work" OUT="$out" PORT="$port"
set +e
xvfb-run -a -s '-screen 0 1280x800x24' bash -c '
  LANTERN_HOME="$WORK" LANTERN_PORT="$PORT" LANTERN_DESKTOP_CHECK="$WORK/report.json" \
    LANTERN_DESKTOP_CHECK_HOLD=4 "$APP" > "$OUT/app.log" 2>&1 &
  app=$!
  for _ in $(seq 1 200); do
    [ -s "$WORK/report.json" ] && break
    kill -0 "$app" 2> /dev/null || break
    sleep 0.1
  done
  sleep 1.5
  import -window root "$OUT/window.png" || echo "screenshot failed" >&2
  wait "$app"
'
status=$?
set -e
cat "$out/app.log"
cp "$work/report.json" "$out/report.json" 2> /dev/null || true
test "$status" -eq 0 || { echo "the desktop app exited with $status" >&2; exit 1; }

python3 - "$work" "$out" "$port" <<'PY'
import json, sqlite3, sys
work, out, port = sys.argv[1:]
report = json.load(open(f"{work}/report.json"))
print("report:", json.dumps(report))
assert "error" not in report, report
assert report["url"].startswith(f"http://127.0.0.1:{port}/"), report["url"]
for page in ["Chat", "Compare", "Models", "Monitor", "Benchmark", "Settings"]:
    assert page in report["nav"], report["nav"]
assert report["chat_status"] == 200 and report["chat_tokens"] >= 1, report
assert report["server_info"]["model"] == "smollm2", report["server_info"]
log = open(f"{out}/app.log").read()
assert f"serving smollm2 at http://127.0.0.1:{port}/" in log, log
assert "server stopped; request log flushed" in log, log
rows = sqlite3.connect(f"{work}/lantern.db").execute(
    "SELECT status, completion_tokens FROM requests WHERE session = 'desktop-check'").fetchall()
assert rows and rows[0][0] == 200, rows
print("desktop: the window showed the UI, IPC answered, the request log was flushed at quit")
PY
