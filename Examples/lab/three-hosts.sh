#!/usr/bin/env bash
# Runs the three-host lab of three-hosts.yaml, pings every pair (the pings to host c cross its
# slow, lossy link), shows the bridge's MAC table and ports, and stops it: tapbridge removes
# the namespaces it made. Run as root:
#
#   Examples/lab/three-hosts.sh       LAB=NAME (default lab$$) names the bridge and its hosts;
#                                     TAPBRIDGE=PATH (default .build/release/tapbridge)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tb=${TAPBRIDGE:-$here/../../.build/release/tapbridge}
[ -x "$tb" ] || { echo "build tapbridge first: swift build -c release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAPs)" >&2; exit 1; }
export LAB=${LAB:-lab$$}
hosts=(a b c)

logs=$(mktemp -d)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$logs"
}
trap cleanup EXIT

"$tb" --config "$here/three-hosts.yaml" 2>"$logs/tapbridge.log" &
pid=$!
"$tb" wait --name "$LAB" || { cat "$logs/tapbridge.log" >&2; exit 1; }

ok=0
for from in 0 1 2; do
	for to in 0 1 2; do
		[ $from = $to ] && continue
		if ip netns exec "$LAB-${hosts[$from]}" ping -c 3 -i 0.2 -W 2 "10.90.0.$((to + 1))" >/dev/null; then
			ok=$((ok + 1))
		fi
	done
done
ip netns exec "$LAB-a" ping -c 3 -i 0.2 10.90.0.3 | tail -1     # rtt: the 40 ms link
"$tb" show fdb --name "$LAB"
"$tb" show ports --name "$LAB"
echo "$ok/6 host pairs reachable"
[ $ok = 6 ]
