#!/usr/bin/env bash
# How large the sled data dir grows under steady load, against its live data: starts
# `natter serve` on loopback on a fresh data dir, drives an open-loop fanout (`natter bench
# fanout`) for $SECS seconds, prints the dir's allocated size every 30 s, stops the server
# (SIGTERM) and starts it once more on the same dir, which prints the startup compaction's
# line when the dir is bloated (live MiB included). Bounded: one server, one bench, $SECS.
#
#   benches/sled_space.sh target/release/natter            # 180 s
#   SECS=60 benches/sled_space.sh /path/to/other/natter    # e.g. a build of an older commit
#
# Load: SCENARIO=fanout (default): ROOMS rooms x MEMBERS members, each sending RATE msg/s of
# SIZE bytes (history only: barely any churn). SCENARIO=offline: rounds of `bench offline`
# (queue entries and dedupe records written, then drained: the churn that bloats sled).
# RESTART_BIN: the binary for the final restart (default the same), e.g. a newer build to see
# it compact the dir an older one left.
set -euo pipefail
bin=$(realpath "$1")
SECS=${SECS:-180} ROOMS=${ROOMS:-4} MEMBERS=${MEMBERS:-25} RATE=${RATE:-5} SIZE=${SIZE:-200}
PORT=${PORT:-18931} SCENARIO=${SCENARIO:-fanout} SENDERS=${SENDERS:-10}
SECRET=natter-space-secret-0123456789abcdef
work=$(mktemp -d "${TMPDIR:-/var/tmp}/natter-space.XXXXXX")
data=$work/data
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

serve() {
  "$bin" serve --listen 127.0.0.1:$PORT --data "$data" --jwt-secret $SECRET --public-rooms '*' \
    --rate-per-sec 100000 --rate-burst 100000 2>>"$work/serve.log" &
  server=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "server did not start:" >&2; cat "$work/serve.log" >&2; exit 1
}
mib() { du -sm "$data" | cut -f1; }

bench() {
  if [ "$SCENARIO" = offline ]; then
    # Queue churn: each round queues SENDERS x 50 messages (with cids) for 90 offline members,
    # then drains them; rounds until $SECS are up.
    local end=$((SECONDS + SECS)) rounds=0
    while [ $SECONDS -lt $end ]; do
      "$bin" bench --url ws://127.0.0.1:$PORT/ws --secret $SECRET --json offline --senders "$SENDERS" \
        --offline 90 --messages 50 --size "$SIZE" >"$work/bench.json"
      rounds=$((rounds + 1))
    done
    echo "offline rounds: $rounds" >"$work/rounds"
  else
    "$bin" bench --url ws://127.0.0.1:$PORT/ws --secret $SECRET --json fanout --rooms "$ROOMS" \
      --members "$MEMBERS" --rate "$RATE" --size "$SIZE" --warmup 1 --duration "$SECS" >"$work/bench.json"
  fi
}

serve
echo "load: $SCENARIO, ${SECS}s (fanout: $ROOMS rooms x $MEMBERS members at $RATE msg/s; offline: $SENDERS senders), $SIZE bytes"
bench &
bench=$!
t=0
while kill -0 $bench 2>/dev/null; do
  sleep 5; t=$((t + 5))
  [ $((t % 30)) = 0 ] && echo "t=${t}s data dir $(mib) MiB allocated"
done
wait $bench
cat "$work/rounds" 2>/dev/null || true
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("bench:", {k: r[k] for k in r if k in ("sent","delivered","deliveries_per_s","lost","errors")})' "$work/bench.json" || cat "$work/bench.json"
cpu=$(ps -o times= -p "$server" | tr -d ' ')
kill -TERM "$server"; wait "$server" || true; server=
echo "after the load: data dir $(mib) MiB allocated (server CPU ${cpu}s)"
bin=$(realpath "${RESTART_BIN:-$bin}")
serve
kill -TERM "$server"; wait "$server" || true; server=
echo "after a restart with $bin: data dir $(mib) MiB allocated"
grep -h "compact" "$work/serve.log" || echo "(no compaction at the restart)"
