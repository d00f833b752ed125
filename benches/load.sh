#!/usr/bin/env bash
# Load test over loopback: bare axum against the palisade stack, interleaved.
#
#   bash benches/load.sh                       # all variants
#   VARIANTS="bare memory" DURATION=5 PAIRS=2 bash benches/load.sh
#
# Starts `examples/production` (release) pinned to CPU 0, drives it with wrk pinned to
# CPU 1 over 127.0.0.1 only, alternates bare/stack runs, and prints requests/s, p50, p99
# and the ratio of each variant to the bare runs of the same session. Every server it
# starts (and the Redis of the `redis` variant) is stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS=${VARIANTS:-"bare memory memory-nolog redis redis-cache-hit"}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
PAIRS=${PAIRS:-3}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

if ! command -v wrk >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release --quiet --example production
BIN=target/release/examples/production
OUT=$(mktemp -d)
REDIS_PID=""
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ " $VARIANTS " == *" redis"* ]]; then
  REDIS_PORT=$(free_port)
  taskset -c "$CLIENT_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  export PALISADE_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
fi

# variant -> (server arguments, route)
args_of() {
  case "$1" in
    bare) echo "--bare" ;;
    memory) echo "--config benches/load-memory.toml" ;;
    memory-nolog) echo "--config benches/load-memory-nolog.toml" ;;
    redis) echo "--config benches/load-redis.toml" ;;
    redis-cache-hit) echo "--config benches/load-redis.toml" ;;
  esac
}
route_of() {
  case "$1" in
    redis-cache-hit) echo "/items/1" ;;
    *) echo "${ROUTE:-/hello}" ;;
  esac
}

run_one() { # variant pair -> appends "variant rps p50_us p99_us" to $OUT/results
  local variant=$1 port route
  port=$(free_port)
  route=$(route_of "$variant")
  # shellcheck disable=SC2046
  PALISADE_SERVER__BIND="127.0.0.1:$port" taskset -c "$SERVER_CPU" "$BIN" $(args_of "$variant") >/dev/null 2>"$OUT/server.err" &
  SERVER_PID=$!
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port$route" >/dev/null 2>&1 && break; sleep 0.05; done
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port$route" >/dev/null
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port$route" >"$OUT/wrk.txt"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  python3 - "$variant" "$OUT/wrk.txt" >>"$OUT/results" <<'PY'
import re, sys
variant, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def us(label):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)" % label, text, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(variant, rps, us("50"), us("99"), non2xx.group(1) if non2xx else 0)
PY
}

for pair in $(seq "$PAIRS"); do
  for v in $VARIANTS; do
    [ "$v" = bare ] && continue
    run_one bare
    run_one "$v"
  done
  [ "$VARIANTS" = bare ] && run_one bare
done

python3 - "$OUT/results" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for v, rps, p50, p99, non2xx in rows:
    by.setdefault(v, []).append((float(rps), float(p50), float(p99), int(non2xx)))
bare = statistics.median(r[0] for r in by.get("bare", [(float("nan"),0,0,0)]))
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[2]}s, server on one core, medians of {len(by.get('bare', []))} bare runs")
print("| variant | req/s | ratio vs bare | p50 µs | p99 µs | non-2xx |")
print("|---|---|---|---|---|---|")
for v, rs in by.items():
    rps = statistics.median(r[0] for r in rs)
    print(f"| {v} | {rps:,.0f} | {rps / bare:.2f} | {statistics.median(r[1] for r in rs):.0f} | {statistics.median(r[2] for r in rs):.0f} | {sum(r[3] for r in rs)} |")
PY
