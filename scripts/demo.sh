#!/usr/bin/env bash
# Runs the whole pipeline once, the way a user would from three terminals: builds in
# release mode, starts the broker on a free loopback port, then the subscriber, then the
# publisher, and prints the verdict with each process's wall time and peak memory.
#
#   scripts/demo.sh                      # 1,000,000 QoS 1 readings
#   scripts/demo.sh 50000 --payload json # fewer readings; extra flags go to the publisher
#
# Exits with the subscriber's code: 0 when every reading arrived intact.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-1000000}
shift $(( $# > 0 ? 1 : 0 ))
every=$(( count >= 1000000 ? 100000 : (count >= 10000 ? count / 10 : 1000) ))

echo "== building (release)"
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d)
broker_pid=""
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Reads one JSON number field from a report written by our binaries.
field() { sed -n "s/^ *\"$2\": \\([0-9.]*\\).*/\\1/p" "$1" | head -n 1; }

"$bin/mqtt-broker" --listen 127.0.0.1:0 >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
for _ in $(seq 200); do
  grep -q 'listening on' "$work/broker.out" && break
  kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^mqtt-broker listening on //p' "$work/broker.out")
[ -n "$addr" ] || { echo "broker did not start" >&2; cat "$work/broker.log" >&2; exit 1; }
port=${addr##*:}
echo "== broker listening on $addr"

"$bin/mqtt-subscriber" --port "$port" --count "$count" --progress-every "$every" \
  --report-json "$work/sub.json" 2> >(tee "$work/sub.log" | sed 's/^/[subscriber] /' >&2) &
sub_pid=$!
for _ in $(seq 200); do
  grep -q 'subscribed to' "$work/sub.log" 2>/dev/null && break
  kill -0 "$sub_pid" 2>/dev/null || break
  sleep 0.1
done

started=$(date +%s%N)
pub_rc=0
"$bin/mqtt-publisher" --port "$port" --count "$count" --progress-every "$every" \
  --report-json "$work/pub.json" "$@" 2> >(sed 's/^/[publisher]  /' >&2) || pub_rc=$?
sub_rc=0
wait "$sub_pid" || sub_rc=$?
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
wall=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
broker_kib=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$broker_pid/status" 2>/dev/null || true)
sleep 0.2

echo
echo "== result"
printf 'readings:          %s at QoS 1\n' "$count"
printf 'wall time:         %s s (publisher start to subscriber verdict)\n' "$wall"
if [ -f "$work/pub.json" ]; then
  printf 'publisher:         %s published, %s acknowledged, %.0f msg/s, peak %s KiB\n' \
    "$(field "$work/pub.json" published)" "$(field "$work/pub.json" acked)" \
    "$(field "$work/pub.json" msgs_per_s)" "$(field "$work/pub.json" peak_rss_kib)"
fi
if [ -f "$work/sub.json" ]; then
  printf 'subscriber:        %s distinct, %s missing, %s duplicates, %s corrupt, peak %s KiB\n' \
    "$(field "$work/sub.json" distinct)" "$(field "$work/sub.json" missing)" \
    "$(field "$work/sub.json" duplicates)" "$(field "$work/sub.json" corrupt)" \
    "$(field "$work/sub.json" peak_rss_kib)"
  printf 'latency:           p50 %s µs, p99 %s µs, max %s µs\n' \
    "$(field "$work/sub.json" p50)" "$(field "$work/sub.json" p99)" "$(field "$work/sub.json" max)"
fi
printf 'broker:            peak %s KiB\n' "${broker_kib:-?}"
if [ "$sub_rc" -eq 0 ] && [ "$pub_rc" -eq 0 ]; then
  echo "verdict:           COMPLETE - every reading arrived intact"
else
  echo "verdict:           FAILED (publisher exit $pub_rc, subscriber exit $sub_rc)"
fi
exit "$sub_rc"
