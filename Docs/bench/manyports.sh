#!/usr/bin/env bash
# Start-up and shutdown of a bridge of N TAP ports, in a namespace of its own (as root):
#   Docs/bench/manyports.sh N [TAPBRIDGE]      IPv6 off in the namespace (the default)
#   IPV6=1 Docs/bench/manyports.sh N           IPv6 on: the kernel's own address configuration
#                                              at every TAP up and down is timed too
# Prints the seconds from exec to the "forwarding between" line, and from SIGTERM to exit.
# Nothing leaves the namespace (the TAPs carry no traffic but the kernel's own); the bridge
# is stopped by PID, killed after 300 s, and the namespace deleted on every path.
set -euo pipefail
n=${1:?usage: manyports.sh N [TAPBRIDGE]}
bin=${2:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/tapbridge}
ns=tbmp$$
log=$(mktemp)
pid=
cleanup() {
	[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	rm -f "$log"
}
trap cleanup EXIT
ip netns add "$ns"
[ -n "${IPV6:-}" ] || ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
args=()
for i in $(seq 1 "$n"); do args+=(--port "mp$i"); done
t0=$(date +%s.%N)
ip netns exec "$ns" "$bin" "${args[@]}" --name "$ns" --control none >"$log" 2>&1 &
pid=$!
until grep -q "forwarding between" "$log"; do
	kill -0 "$pid" 2>/dev/null || { echo "tapbridge exited:"; tail -3 "$log"; exit 1; }
	[ "$(echo "$(date +%s.%N) - $t0 > 300" | bc)" = 1 ] && { echo "not started after 300 s"; exit 1; }
	sleep 0.05
done
t1=$(date +%s.%N)
sleep 2
t2=$(date +%s.%N)
kill -TERM "$pid"
for _ in $(seq 1 6000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
t3=$(date +%s.%N)
if kill -0 "$pid" 2>/dev/null; then echo "still running 300 s after SIGTERM"; exit 1; fi
pid=
printf '%d ports%s: start %.2f s, stop %.2f s\n' "$n" "${IPV6:+ (IPv6 on)}" "$(echo "$t1 - $t0" | bc)" "$(echo "$t3 - $t2" | bc)"
