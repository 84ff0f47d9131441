#!/usr/bin/env bash
# The desktop app under Xvfb, as a user starts it: the window opens on the UI its in-process
# server serves (screenshot), the page reaches the app over IPC, a second launch hands over to
# the first and exits (single instance, over a D-Bus session bus), a configured port that another
# program holds makes the app ask and take the next free one, a chat request made in the
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
xvfb-run -a -s '-screen 0 1280x800x24' dbus-run-session -- bash -c '
  LANTERN_HOME="$WORK" LANTERN_PORT="$PORT" LANTERN_DESKTOP_CHECK="$WORK/report.json" \
    LANTERN_DESKTOP_CHECK_HOLD=8 "$APP" > "$OUT/app.log" 2>&1 &
  app=$!
  for _ in $(seq 1 300); do
    grep -q "serving smollm2" "$OUT/app.log" && break
    sleep 0.1
  done
  # A second launch finds the first and exits at once, without a server of its own.
  LANTERN_HOME="$WORK" LANTERN_PORT="$PORT" timeout 20 "$APP" > "$OUT/second.log" 2>&1
  echo "second launch exited with $?" >> "$OUT/second.log"
  for _ in $(seq 1 200); do
    [ -s "$WORK/report.json" ] && break
    kill -0 "$app" 2> /dev/null || break
    sleep 0.1
  done
  sleep 1.5
  import -window root "$OUT/window.png" || echo "screenshot failed" >&2
  [ -s "$WORK/report.json" ] || kill "$app"
  wait "$app"
'
status=$?
set -e
cat "$out/app.log"
cp "$work/report.json" "$out/report.json" 2> /dev/null || true
test "$status" -eq 0 || { echo "the desktop app exited with $status" >&2; exit 1; }

# The configured port taken by another program: the app asks, the user takes the next free port.
taken=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/second-home/models"
ln -s "$models/smollm2" "$work/second-home/models/smollm2"
export TAKEN="$taken"
set +e
xvfb-run -a -s '-screen 0 1280x800x24' dbus-run-session -- bash -c '
  python3 -c "import socket, time, sys; s = socket.socket(); s.bind((\"127.0.0.1\", int(sys.argv[1]))); s.listen(); time.sleep(120)" "$TAKEN" &
  holder=$!
  sleep 0.5
  LANTERN_HOME="$WORK/second-home" LANTERN_PORT="$TAKEN" LANTERN_DESKTOP_CHECK="$WORK/taken.json" \
    LANTERN_DESKTOP_CHECK_HOLD=1 "$APP" > "$OUT/taken.log" 2>&1 &
  app=$!
  for _ in $(seq 1 300); do
    xdotool search --name "^Lantern\$" > /dev/null 2>&1 && break
    sleep 0.1
  done
  sleep 0.5
  import -window root "$OUT/port-taken.png"
  xdotool key Return
  for _ in $(seq 1 300); do [ -s "$WORK/taken.json" ] && break; sleep 0.1; done
  # Without a report the app would wait for a user: stop it (the check then fails).
  [ -s "$WORK/taken.json" ] || kill "$app"
  wait "$app"
  status=$?
  kill "$holder"
  exit $status
'
status=$?
set -e
test "$status" -eq 0 || { cat "$out/taken.log"; echo "the desktop app (port taken) exited with $status" >&2; exit 1; }

python3 - "$work" "$out" "$port" "$taken" <<'PY'
import json, sqlite3, sys
work, out, port, taken = sys.argv[1:]
report = json.load(open(f"{work}/report.json"))
print("report:", json.dumps(report))
assert "error" not in report, report
assert report["url"].startswith(f"http://127.0.0.1:{port}/"), report["url"]
for page in ["Chat", "Compare", "Models", "Monitor", "Benchmark", "Settings"]:
    assert page in report["nav"], report["nav"]
assert report["chat_status"] == 200 and report["chat_tokens"] >= 1, report
assert report["server_info"]["model"] == "smollm2", report["server_info"]
assert report["server_info"]["admin_token"] == "(given)", report["server_info"]
assert report["admin_status"] == 200 and report["ipc_admin_status"] == 200, report
assert report["no_token_status"] == 401, report
second = open(f"{out}/second.log").read()
assert "second launch exited with 0" in second and "serving" not in second, second
log = open(f"{out}/app.log").read()
assert f"serving smollm2 at http://127.0.0.1:{port}/" in log, log
assert "server stopped; request log flushed" in log, log
rows = sqlite3.connect(f"{work}/lantern.db").execute(
    "SELECT status, completion_tokens FROM requests WHERE session = 'desktop-check'").fetchall()
assert rows and rows[0][0] == 200, rows
moved = json.load(open(f"{work}/taken.json"))
moved_port = int(moved["url"].split(":")[2].strip("/"))
assert moved_port > int(taken) and moved["chat_status"] == 200, moved
print("desktop: the window showed the UI, IPC answered, a second launch handed over, the request "
      "log was flushed at quit")
PY
