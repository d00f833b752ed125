#!/usr/bin/env bash
# Soak test over loopback (not run in CI): the full stack under steady load from
# ever-new clients, watching for memory, file-descriptor, thread or request leaks.
#
#   bash benches/soak.sh                         # 6 minutes
#   DURATION=600 SAMPLE_EVERY=30 bash benches/soak.sh
#   nice -n 19 bash benches/soak.sh              # on a machine that is doing other work
#   PROFILE=debug bash benches/soak.sh           # the debug build
#
# Starts `examples/production` (release) with benches/soak.toml: in-memory rate
# limiter and cache with LOW caps (2 000 keys, 1 000 entries / 1 MiB), 127.0.0.1
# trusted as the load balancer. wrk (benches/soak.lua) sends every request with a
# random X-Forwarded-For (a new client key each time) to /hello or one of a million
# /items/{id}, so both caps are reached within seconds and evictions run from then on.
#
# Every SAMPLE_EVERY seconds it prints the server's resident memory (VmRSS), open
# file descriptors, threads and the in-flight request gauge from /metrics; at the end
# it prints start / middle / end and the growth between middle and end, once the caps
# have long been reached. The server is stopped by its PID when the script ends.
# Traffic goes to 127.0.0.1 only, for DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-360}
SAMPLE_EVERY=${SAMPLE_EVERY:-30}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}

if ! command -v wrk >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
# PROFILE=debug soaks the debug build (slower, the same leak checks) without a release build.
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --example production
else
  cargo build --quiet --all-features --example production
fi
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE/examples/production
OUT=$(mktemp -d)
SERVER_PID=""
WRK_PID=""
cleanup() {
  [ -n "$WRK_PID" ] && kill "$WRK_PID" 2>/dev/null && wait "$WRK_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PALISADE_SERVER__BIND="127.0.0.1:$PORT" "$BIN" --config benches/soak.toml >/dev/null 2>"$OUT/server.err" &
SERVER_PID=$!
for _ in $(seq 200); do
  curl -fs --max-time 1 -H 'host: localhost' "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs --max-time 1 -H 'host: localhost' "http://127.0.0.1:$PORT/health" >/dev/null || {
  echo "the server did not start:" >&2; cat "$OUT/server.err" >&2; exit 1; }

sample() { # seconds -> one line: t rss_kib fds threads active_requests
  local rss fds threads active
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$SERVER_PID/status")
  fds=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  # In-flight requests (the scrape itself is not counted).
  active=$(curl -fs --max-time 5 -H 'host: localhost' "http://127.0.0.1:$PORT/metrics" |
    awk '/^http_server_active_requests/ {s += $NF} END {print s + 0}')
  echo "$1 $rss $fds $threads $active"
}

printf '%8s %10s %6s %8s %8s\n' t_s rss_kib fds threads active
sample 0 | tee -a "$OUT/samples" | awk '{printf "%8s %10s %6s %8s %8s   (idle, before load)\n", $1, $2, $3, $4, $5}'
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s benches/soak.lua \
  "http://127.0.0.1:$PORT" >"$OUT/wrk.txt" 2>&1 &
WRK_PID=$!
start=$(date +%s)
while kill -0 "$WRK_PID" 2>/dev/null; do
  sleep "$SAMPLE_EVERY"
  kill -0 "$WRK_PID" 2>/dev/null || break
  sample $(( $(date +%s) - start )) | tee -a "$OUT/samples" |
    awk '{printf "%8s %10s %6s %8s %8s\n", $1, $2, $3, $4, $5}'
done
wait "$WRK_PID" || true
WRK_PID=""
sleep 1
sample "$(( $(date +%s) - start ))" | tee -a "$OUT/samples" |
  awk '{printf "%8s %10s %6s %8s %8s   (after load)\n", $1, $2, $3, $4, $5}'

echo
sed -n '/Latency Distribution/,/^ *99%/p;/requests in/,$p' "$OUT/wrk.txt"
echo
# start = first sample under load, middle = the one nearest DURATION/2, end = last under load.
awk -v half=$(( DURATION / 2 )) '
  NR == 1 { idle = $2; next }
  { n++; t[n] = $1; rss[n] = $2; fds[n] = $3; thr[n] = $4 }
  END {
    last = n - 1; if (last < 1) last = n
    mid = 1; for (i = 1; i <= last; i++) if ((t[i] - half)^2 < (t[mid] - half)^2) mid = i
    printf "RSS KiB: idle %d, start (t=%ds) %d, middle (t=%ds) %d, end (t=%ds) %d, after load %d\n",
      idle, t[1], rss[1], t[mid], rss[mid], t[last], rss[last], rss[n]
    printf "growth middle -> end: %+d KiB (%+.1f%%)\n", rss[last] - rss[mid], 100 * (rss[last] - rss[mid]) / rss[mid]
    printf "fds: start %d, middle %d, end %d, after load %d; threads: start %d, middle %d, end %d, after load %d\n",
      fds[1], fds[mid], fds[last], fds[n], thr[1], thr[mid], thr[last], thr[n]
  }' "$OUT/samples"
non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$OUT/wrk.txt" || true)
echo "${non2xx:-Non-2xx or 3xx responses: 0} (429s from the per-ip limit of 5 a minute are expected)"
if grep -qiE 'panic|error' "$OUT/server.err"; then
  echo "server stderr:" >&2; cat "$OUT/server.err" >&2; exit 1
fi
