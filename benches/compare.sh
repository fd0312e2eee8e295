#!/usr/bin/env bash
# The end-to-end comparison: builds natter and the raw-TCP reference, starts each server on
# loopback pinned to CPU 0, runs the same `natter bench` scenarios pinned to CPU 1 against each,
# in one run, then prints every figure with its ratio to natter and draws the plots
# (benches/report.py). Results land in $OUT (default benches/results/).
#
#   benches/compare.sh            # full run, about 6 minutes
#   QUICK=1 benches/compare.sh    # shorter measurements, fewer room sizes
#
# Servers: natter over ws and wss, the tutorial's Node.js server in memory mode and, when
# redis-server is installed (or can be: root + apt), in Redis mode, and the raw reference.
# BEFORE=path/to/an/older/natter adds that build over ws to the shape matrix and its latency
# run, for before/after figures from the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
OUT=${OUT:-$root/benches/results}
TUTORIAL=${TUTORIAL:-$root/../shared/peers/tutorial-node/run.sh}
SECRET="natter-bench-secret-0123456789abcdef"  # natter wants 32 bytes or more
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DUR=2; WARM=0.5; SIZES="2 10 100"; IDLE=2000; else DUR=5; WARM=1; SIZES="2 5 10 25 50 100"; IDLE=10000; fi
# The shape matrix (rooms x members, every member sending), one `--shapes` run per server.
if [ "$QUICK" = 1 ]; then SHAPES=${SHAPES:-500x2,200x5,1x100}; else SHAPES=${SHAPES:-500x2,200x5,50x20,1x100,1x1000}; fi
[ "$(nproc)" -ge 2 ] || { echo "compare.sh: needs 2 CPUs (server on CPU 0, load generator on CPU 1)" >&2; exit 1; }

cargo build --release --locked --bin natter --example raw_fanout
natter=$root/target/release/natter
raw=$root/target/release/examples/raw_fanout
mkdir -p "$OUT"
rm -f "$OUT"/*.json
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${redis_pid:-}" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME PORT COMMAND...: start a server pinned to CPU 0, wait for its port.
declare -A port_of pid_of
start() {
  local name=$1 port=$2
  shift 2
  (cd "$work" && exec taskset -c 0 "$@" >"$work/$name.log" 2>&1) &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  # The process that listens (the shell's exec chain keeps the same pid).
  port_of[$name]=$port
  pid_of[$name]=$pid
}
lim=(--rate-per-sec 1000000 --rate-burst 1000000 --max-connections-per-uid 100000 --max-connections-per-ip 100000)
start natter-ws 9401 "$natter" serve --listen 127.0.0.1:9401 --data "$work/ws" --jwt-secret $SECRET "${lim[@]}"
start natter-wss 9402 "$natter" serve --dev --listen 127.0.0.1:9402 --data "$work/wss" --jwt-secret $SECRET "${lim[@]}"
start raw-tcp 9405 "$raw" 127.0.0.1:9405
servers=(natter-ws natter-wss raw-tcp)
if [ -n "${BEFORE:-}" ]; then
  start natter-before 9406 "$BEFORE" serve --listen 127.0.0.1:9406 --data "$work/before" --jwt-secret $SECRET "${lim[@]}"
fi
if [ -x "$TUTORIAL" ]; then
  PORT=9403 JWT_SECRET=$SECRET start tutorial-memory 9403 "$TUTORIAL" memory
  servers+=(tutorial-memory)
  if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 || true
  fi
  if command -v redis-server >/dev/null; then
    taskset -c 0 redis-server --port 6399 --save '' --appendonly no >"$work/redis.log" 2>&1 &
    redis_pid=$!
    sleep 0.5
    PORT=9404 JWT_SECRET=$SECRET REDIS_URL=redis://127.0.0.1:6399 start tutorial-redis 9404 "$TUTORIAL" redis
    servers+=(tutorial-redis)
  else
    echo "compare.sh: no redis-server: the tutorial's Redis mode is left out" >&2
  fi
else
  echo "compare.sh: $TUTORIAL not found: the tutorial server is left out (set TUTORIAL=)" >&2
fi

url() {
  case $1 in natter-wss) echo "wss://127.0.0.1:${port_of[$1]}/ws" ;; natter-ws | natter-before) echo "ws://127.0.0.1:${port_of[$1]}/ws" ;; *) echo "ws://127.0.0.1:${port_of[$1]}/" ;; esac
}
# bench SERVER LABEL ARGS...: one run, JSON kept as $OUT/SERVER--LABEL.json
bench() {
  local s=$1 label=$2
  shift 2
  local tls=()
  [ "$s" = natter-wss ] && tls=(--insecure)
  echo "== $s: $label" >&2
  if ! taskset -c 1 "$natter" bench --url "$(url "$s")" "${tls[@]}" --secret $SECRET --json "$@" >"$OUT/$s--$label.json" 2>"$work/bench.err"; then
    echo "   failed: $(tail -1 "$work/bench.err")" >&2
    rm -f "$OUT/$s--$label.json"
  fi
}

# Fan-out, closed loop, one room, by room size.
for m in $SIZES; do
  for s in "${servers[@]}"; do bench "$s" "fanout-$m" fanout --members "$m" --warmup $WARM --duration $DUR; done
done
# Many rooms at once, by shape (one JSON array per server).
shape_servers=("${servers[@]}")
[ -n "${BEFORE:-}" ] && shape_servers+=(natter-before)
for s in "${shape_servers[@]}"; do bench "$s" shapes fanout --shapes "$SHAPES" --warmup $WARM --duration $DUR; done
# The same with a cid on every message: each acked once flushed (natter only: no acks elsewhere).
for s in natter-ws natter-wss; do bench "$s" shapes-cid fanout --shapes "$SHAPES" --cid --warmup $WARM --duration $DUR; done
# Open loop in 200 rooms of 5 at half of each server's own 200x5 closed-loop publishes/s.
for s in "${shape_servers[@]}"; do
  f=$OUT/$s--shapes.json
  [ -f "$f" ] || continue
  rate=$(python3 -c "import json;r=[x for x in json.load(open('$f')) if ' 200 room(s) x 5 ' in x['scenario']];print(max(0.1, r[0]['deliveries_per_s']/4/2/1000) if r else 0)")
  [ "$rate" = 0 ] && continue
  bench "$s" latency-200x5 fanout --rooms 200 --members 5 --rate "$rate" --warmup $WARM --duration $DUR
done
# Latency at half of each server's own maximum throughput in the room of 100.
for s in "${servers[@]}"; do
  f=$OUT/$s--fanout-100.json
  [ -f "$f" ] || continue
  rate=$(python3 -c "import json;r=json.load(open('$f'));print(max(0.1, r['deliveries_per_s']/2/(100*99)))")
  bench "$s" latency-half fanout --members 100 --rate "$rate" --warmup $WARM --duration $DUR
done
# Idle connections: set-up rate and server memory.
for s in natter-wss natter-ws; do
  bench "$s" "connect-$IDLE" --sources 4 connect --connections $IDLE --hold 3 --server-pid "${pid_of[$s]}"
done
# Durable offline writes (natter only: the tutorial server has no acks).
for s in natter-ws natter-wss; do bench "$s" offline offline --senders 10 --offline 500 --messages 100; done

python3 "$root/benches/report.py" "$OUT"
