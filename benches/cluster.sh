#!/usr/bin/env bash
# Scale-out on Redis, in one run: the same closed-loop fanout shapes (`natter bench fanout`)
# against natter on its embedded sled store, natter on Redis with 1, 2 and 3 nodes (the bench's
# connections spread round-robin over the nodes, so the members of a room sit on different
# nodes), and the tutorial's Node.js server in Redis mode; then again on Redis with
# `appendonly yes, appendfsync always` (AOF=0 leaves that out). Every server and redis-server
# on CPU 0, the load generator on CPU 1; a fresh redis-server of its own (temp dir, loopback)
# for each setup. Prints one markdown table (benches/cluster_report.py) with the CPU 0 time
# each delivery cost; JSON, CPU samples and server logs land in $OUT.
#
#   benches/cluster.sh                          # about 4 minutes
#   AOF=0 SHAPES=500x2,1x100 benches/cluster.sh # shorter
#
# Env: SHAPES (ROOMSxMEMBERS, comma-separated), WARM and DUR (seconds), AOF (0 or 1), OUT,
# CONNECT_CONCURRENCY (see below), TUTORIAL (its run.sh), BASE_PORT (natter nodes on
# BASE_PORT+1.., the tutorial on BASE_PORT+9, redis-server on BASE_PORT+10).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
OUT=${OUT:-$root/benches/results/cluster}
TUTORIAL=${TUTORIAL:-$root/../shared/peers/tutorial-node/run.sh}
SECRET="natter-bench-secret-0123456789abcdef" # natter wants 32 bytes or more
SHAPES=${SHAPES:-500x2,50x20,1x100}
WARM=${WARM:-1}
DUR=${DUR:-4}
AOF=${AOF:-1}
BASE_PORT=${BASE_PORT:-9420}
# Connections set up at once (the bench's default; the set-up phase is not measured). The run
# in BENCHMARKS.md used 4, from before the sled store's flush stopped hanging on many rooms
# opening at once (tests/robustness.rs::many_rooms_opened_at_once_all_open).
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-256}
redis_port=$((BASE_PORT + 10))
[ "$(nproc)" -ge 2 ] || { echo "cluster.sh: needs 2 CPUs (servers on CPU 0, load generator on CPU 1)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "cluster.sh: needs redis-server (apt-get install redis-server)" >&2; exit 1; }

cargo build --release --locked --bin natter
natter=${CARGO_TARGET_DIR:-$root/target}/release/natter
mkdir -p "$OUT/logs"
rm -f "$OUT"/*.json "$OUT"/*.cpu "$OUT"/*.t0 "$OUT"/summary.md "$OUT"/logs/*.log
work=$(mktemp -d)
pids=() named=() # named: NAME:PID of each server of the setup, for the CPU sampler
# stop_all: SIGTERM to every server of the setup, the last started first (the nodes before
# their redis-server, so that their shutdown still reaches it); one still there after 10 s is
# reported and killed (a hung server must not hang the run).
stop_all() {
  local i p _
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "   ${named[i]%:*} did not exit 10 s after SIGTERM: killed" >&2
      kill -9 "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  pids=() named=()
}
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME PORT COMMAND...: start a server pinned to CPU 0 and wait for its port; its log is
# $work/NAME.log. The shell's exec chain keeps the pid, so $! is the server itself.
start() {
  local name=$1 port=$2
  shift 2
  if listening "$port"; then echo "cluster.sh: port $port is taken (set BASE_PORT=)" >&2; exit 1; fi
  (cd "$work" && exec taskset -c 0 "$@" >"$work/$name.log" 2>&1) &
  local pid=$!
  pids+=("$pid")
  named+=("$name:$pid")
  for _ in $(seq 150); do
    listening "$port" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "cluster.sh: $name did not listen on $port; its log:" >&2
  tail -20 "$work/$name.log" >&2
  exit 1
}

# redis MODE: a fresh redis-server on CPU 0; MODE none (no persistence) or aof (fsync always).
redis() {
  local dir=$work/redis-$RANDOM persist=(--appendonly no)
  mkdir -p "$dir"
  [ "$1" = aof ] && persist=(--appendonly yes --appendfsync always)
  start redis "$redis_port" redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir" --save '' "${persist[@]}"
}

lim=(--rate-per-sec 1000000 --rate-burst 1000000 --max-connections-per-uid 100000 --max-connections-per-ip 100000)
# nodes N: N natter nodes on the redis-server (N = 0: one node on sled); sets $urls.
nodes() {
  urls=()
  local i redis_args=()
  [ "$1" -gt 0 ] && redis_args=(--redis "redis://127.0.0.1:$redis_port/0")
  for i in $(seq "$(($1 > 0 ? $1 : 1))"); do
    local port=$((BASE_PORT + i))
    start "natter-$i" "$port" "$natter" serve --listen "127.0.0.1:$port" --data "$work/data-$RANDOM-$i" \
      --jwt-secret "$SECRET" "${lim[@]}" "${redis_args[@]}"
    urls+=("ws://127.0.0.1:$port/ws")
  done
}

# measure SETUP: every shape against $urls, one `natter bench` each, with CPU samples of CPU 0
# and of every server process ($pids) beside it; then the setup's servers stop and their logs
# are kept, and any warning or error in them is shown.
measure() {
  local setup=$1 shape url_args=() u
  for u in "${urls[@]}"; do url_args+=(--url "$u"); done
  IFS=, read -ra shapes <<<"$SHAPES"
  for shape in "${shapes[@]}"; do
    local label=$setup--$shape
    echo "== $setup: $shape over ${#urls[@]} URL(s)" >&2
    taskset -c 1 python3 "$root/benches/cluster_report.py" sample "$OUT/$label.cpu" "${named[@]}" &
    local sampler=$!
    sleep 0.3
    date +%s.%N >"$OUT/$label.t0"
    if ! taskset -c 1 "$natter" bench "${url_args[@]}" --secret "$SECRET" --json --connect-concurrency "$CONNECT_CONCURRENCY" \
      fanout --rooms "${shape%x*}" --members "${shape#*x}" --warmup "$WARM" --duration "$DUR" \
      >"$OUT/$label.json" 2>"$OUT/logs/$label.bench.log"; then
      echo "   failed: $(tail -1 "$OUT/logs/$label.bench.log")" >&2
      rm -f "$OUT/$label.json"
    fi
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
  done
  stop_all
  local log n
  for log in "$work"/*.log; do
    [ -e "$log" ] || continue
    mv "$log" "$OUT/logs/$setup--$(basename "$log")"
  done
  for log in "$OUT"/logs/"$setup"--*.log; do
    n=$(warnings "$setup" "$log" | wc -l)
    [ "$n" = 0 ] || { echo "   $n warning/error line(s) in $(basename "$log"):" >&2; warnings "$setup" "$log" | head -5 >&2; }
  done
}

# warnings SETUP LOG: its warning and error lines, less the ones expected here: plain ws://,
# redis-server's note about vm.overcommit_memory, and (not in the -aof setups) no AOF.
warnings() {
  local expected='no --cert/--key|Memory overcommit must be enabled'
  [[ $1 == *-aof ]] || expected+='|AOF is not on with appendfsync always'
  grep -iE '\b(WARN|WARNING|ERROR|panicked)\b' "$2" | grep -vE "$expected" || true
}

tutorial() {
  PORT=$((BASE_PORT + 9)) JWT_SECRET=$SECRET REDIS_URL=redis://127.0.0.1:$redis_port \
    start tutorial "$((BASE_PORT + 9))" "$TUTORIAL" redis
  urls=("ws://127.0.0.1:$((BASE_PORT + 9))/")
}

nodes 0 && measure natter-sled
modes=(none)
[ "$AOF" = 1 ] && modes+=(aof)
for mode in "${modes[@]}"; do
  suffix=""
  [ "$mode" = aof ] && suffix="-aof"
  for n in 1 2 3; do redis "$mode" && nodes "$n" && measure "natter-redis$n$suffix"; done
  if [ -x "$TUTORIAL" ]; then
    redis "$mode" && tutorial && measure "tutorial-redis$suffix"
  else
    echo "cluster.sh: $TUTORIAL not found: the tutorial is left out (set TUTORIAL=)" >&2
  fi
done

WARM=$WARM python3 "$root/benches/cluster_report.py" table "$OUT" "$SHAPES"
