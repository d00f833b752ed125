#!/usr/bin/env bash
# Load test over loopback: bare axum against the palisade stack, interleaved.
#
#   bash benches/load.sh                       # all variants
#   VARIANTS="bare memory" DURATION=5 PAIRS=2 bash benches/load.sh
#   LOG_SINK=pipe VARIANTS="bare memory memory-direct" bash benches/load.sh
#
# Starts `examples/production` (release) pinned to CPU 0, drives it with wrk pinned to
# CPU 1 over 127.0.0.1 only, alternates bare/stack runs, and prints requests/s, p50, p99
# and the ratio of each variant to the bare runs of the same session. Every server it
# starts (and the Redis of the `redis` variant) is stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS=${VARIANTS:-"bare memory memory-nolog redis redis-cache-hit redis-cache"}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
PAIRS=${PAIRS:-3}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
# Where the server's stdout (its log lines) goes: /dev/null, or `pipe` (read by `cat` on
# the client CPU, as a container runtime reads it).
LOG_SINK=${LOG_SINK:-null}
# The key of benches/load-*.toml's API-key rule on /hello (sent to bare too, where it is ignored).
API_KEY_HEADER="x-api-key: bench-key-0123456789abcdef"

if ! command -v wrk >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release --quiet --example production
BIN=${CARGO_TARGET_DIR:-target}/release/examples/production
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
    memory | memory-direct) echo "--config benches/load-memory.toml" ;;
    memory-nolog) echo "--config benches/load-memory-nolog.toml" ;;
    redis) echo "--config benches/load-redis.toml" ;;
    redis-cache-hit) echo "--config benches/load-redis.toml" ;;
    redis-cache) echo "--config benches/load-redis-cache.toml" ;;
  esac
}
route_of() {
  case "$1" in
    redis-cache-hit | redis-cache) echo "/items/1" ;;
    *) echo "${ROUTE:-/hello}" ;;
  esac
}

cpu_ticks() { # "utime stime" of a PID, in clock ticks
  awk '{print $14, $15}' "/proc/$1/stat"
}

run_one() { # variant -> appends "variant rps p50_us p99_us non2xx cpu_us_per_req user_us sys_us" to $OUT/results
  local variant=$1 port route
  port=$(free_port)
  route=$(route_of "$variant")
  # The API key goes only to the route whose auth rule wants it: a credential on a
  # cached route makes the cache bypass (`detail=credentials`), which would turn the
  # cache-hit variant into a miss on every request.
  local hdr=()
  [ "$route" = /hello ] && hdr=(-H "$API_KEY_HEADER")
  local envs=("PALISADE_SERVER__BIND=127.0.0.1:$port")
  # `memory` with each log line written by the request's thread (stdout's own buffering).
  [ "$variant" = memory-direct ] && envs+=("PALISADE_LOGGING__BACKGROUND_WRITER=false")
  if [ "$LOG_SINK" = pipe ]; then
    # The server's stdout read through a pipe, as a container runtime reads it.
    local logfd
    exec {logfd}> >(taskset -c "$CLIENT_CPU" cat >/dev/null)
    # shellcheck disable=SC2046
    env "${envs[@]}" taskset -c "$SERVER_CPU" "$BIN" $(args_of "$variant") >&"$logfd" 2>"$OUT/server.err" &
    SERVER_PID=$!
    exec {logfd}>&-
  else
    # shellcheck disable=SC2046
    env "${envs[@]}" taskset -c "$SERVER_CPU" "$BIN" $(args_of "$variant") >/dev/null 2>"$OUT/server.err" &
    SERVER_PID=$!
  fi
  local up=""
  for _ in $(seq 200); do
    if curl -fs --max-time 1 "${hdr[@]}" "http://127.0.0.1:$port$route" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.05
  done
  if [ -z "$up" ]; then
    echo "load.sh: $variant did not answer 2xx on $route within 10 s:" >&2
    cat "$OUT/server.err" >&2
    exit 1
  fi
  timeout $((WARMUP + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" "http://127.0.0.1:$port$route" >/dev/null
  if [[ "$variant" == redis-cache* ]] && ! curl -fsD - -o /dev/null "http://127.0.0.1:$port$route" | grep -qi "^x-cache: HIT"; then
    echo "load.sh: $variant is not served from the cache" >&2
    exit 1
  fi
  local u0 s0 u1 s1
  read -r u0 s0 < <(cpu_ticks "$SERVER_PID")
  timeout $((DURATION + 30)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "http://127.0.0.1:$port$route" >"$OUT/wrk.txt"
  read -r u1 s1 < <(cpu_ticks "$SERVER_PID")
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  python3 - "$variant" "$OUT/wrk.txt" "$((u1 - u0))" "$((s1 - s0))" "$(getconf CLK_TCK)" >>"$OUT/results" <<'PY'
import re, sys
variant, path = sys.argv[1], sys.argv[2]
user, system, hz = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
text = open(path).read()
def us(label):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)" % label, text, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
total = int(re.search(r"(\d+) requests in", text).group(1))
per_req = lambda ticks: ticks / hz * 1e6 / max(total, 1)
print(variant, rps, us("50"), us("99"), non2xx.group(1) if non2xx else 0,
      per_req(user + system), per_req(user), per_req(system))
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

if [ -n "$REDIS_PID" ]; then
  # Proof that the Redis variants used Redis (on_store_error = "local" would hide an outage).
  echo "redis commandstats (calls):"
  redis-cli -p "$REDIS_PORT" info commandstats | grep -E 'cmdstat_(evalsha|eval|get|set|mget|script)' | sed 's/usec_per_call/µs_per_call/' || true
fi

python3 - "$OUT/results" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for v, rps, p50, p99, non2xx, cpu, user, system in rows:
    by.setdefault(v, []).append(
        (float(rps), float(p50), float(p99), int(non2xx), float(cpu), float(user), float(system)))
bare = statistics.median(r[0] for r in by.get("bare", [(float("nan"),0,0,0,0)]))
print(f"wrk -t1 -c{sys.argv[3]} -d{sys.argv[2]}s, server on one core, medians of {len(by.get('bare', []))} bare runs")
# The user/system split shows what the kernel adds: over loopback a slower server also
# pays more to wake the client (see BENCHMARKS.md, round 8).
print("| variant | runs | req/s (median) | ratio vs bare | min..max ratio | p50 µs | p99 µs | server CPU µs/req | user + system | non-2xx |")
print("|---|---|---|---|---|---|---|---|---|---|")
for v, rs in by.items():
    rps = statistics.median(r[0] for r in rs)
    lo, hi = min(r[0] for r in rs) / bare, max(r[0] for r in rs) / bare
    print(f"| {v} | {len(rs)} | {rps:,.0f} | {rps / bare:.2f} | {lo:.2f}..{hi:.2f} | {statistics.median(r[1] for r in rs):.0f} | {statistics.median(r[2] for r in rs):.0f} | {statistics.median(r[4] for r in rs):.1f} | {statistics.median(r[5] for r in rs):.1f} + {statistics.median(r[6] for r in rs):.1f} | {sum(r[3] for r in rs)} |")
print("raw runs (variant rps p50 p99 non2xx cpu_us_per_req user_us sys_us):")
for l in open(sys.argv[1]):
    print("  " + l.strip())
PY
