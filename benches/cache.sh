#!/usr/bin/env bash
# Issue 8's Redis cache comparison in the setup of its reference rates: the bench's
# 1-worker runtime pinned to one core, a throwaway redis-server pinned to the other.
#
#   bash benches/cache.sh              # three passes
#   PASSES=5 bash benches/cache.sh
#
# Each pass is `benches/cache.rs`'s 64-task comparison (seven interleaved rounds of
# 64 000 operations per variant: raw GETs through palisade's pool and through one plain
# redis-rs `MultiplexedConnection`, the cache hit over the handler and through a router)
# and prints the medians and the CPU each variant costs the client and Redis. The Redis
# it starts is stopped by PID when it ends; nothing but 127.0.0.1 is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."

PASSES=${PASSES:-3}
BENCH_CPU=${BENCH_CPU:-0}
REDIS_CPU=${REDIS_CPU:-1}

cargo bench --quiet --bench cache --no-run
BIN=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/cache-* | grep -v '\.d$' | head -1)
REDIS_PID=""
cleanup() {
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c "$REDIS_CPU" redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

for pass in $(seq "$PASSES"); do
  echo "== pass $pass of $PASSES (bench on CPU $BENCH_CPU, Redis on CPU $REDIS_CPU)"
  PALISADE_BENCH_REDIS_URL="redis://127.0.0.1:$PORT" taskset -c "$BENCH_CPU" "$BIN" --bench zzz-none 2>&1 |
    grep -E '^(Redis, 64 tasks|raw GET|handler doing|cache hit)'
done
