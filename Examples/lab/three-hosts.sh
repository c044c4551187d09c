#!/usr/bin/env bash
# Three hosts on one tapbridge, each in its own network namespace:
#
#   ns lab-a-PID (10.90.0.1) ── TAP lab-a-PID ┐
#   ns lab-b-PID (10.90.0.2) ── TAP lab-b-PID ┼── tapbridge --name lab-PID
#   ns lab-c-PID (10.90.0.3) ── TAP lab-c-PID ┘
#
# It pings every pair, shows the bridge's MAC table and ports, and removes everything it made
# on exit (namespaces, and tapbridge, whose TAPs vanish with it). Run as root:
#
#   Examples/lab/three-hosts.sh            (uses .build/release/tapbridge, or $TAPBRIDGE)
set -euo pipefail
tb=${TAPBRIDGE:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/tapbridge}
[ -x "$tb" ] || { echo "build tapbridge first: swift build -c release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAPs)" >&2; exit 1; }

id=$$
hosts=(a b c)
name=lab-$id
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	for h in "${hosts[@]}"; do ip netns del "lab-$h-$id" 2>/dev/null || true; done
}
trap cleanup EXIT

ports=()
for h in "${hosts[@]}"; do ports+=(--port "lab-$h-$id"); done
"$tb" --name "$name" "${ports[@]}" 2>"/tmp/$name.log" &
pid=$!
for _ in $(seq 50); do ip link show "lab-c-$id" >/dev/null 2>&1 && break; sleep 0.1; done

i=1
for h in "${hosts[@]}"; do
	ns=lab-$h-$id
	ip netns add "$ns"
	ip link set "lab-$h-$id" netns "$ns"
	ip -n "$ns" addr add "10.90.0.$i/24" dev "lab-$h-$id"
	ip -n "$ns" link set "lab-$h-$id" up
	ip -n "$ns" link set lo up
	i=$((i + 1))
done

ok=0
for from in 1 2 3; do
	for to in 1 2 3; do
		[ $from = $to ] && continue
		if ip netns exec "lab-${hosts[$((from - 1))]}-$id" ping -c 1 -W 2 "10.90.0.$to" >/dev/null; then
			ok=$((ok + 1))
		fi
	done
done
"$tb" show fdb --name "$name"
"$tb" show ports --name "$name"
echo "$ok/6 host pairs reachable"
[ $ok = 6 ]
