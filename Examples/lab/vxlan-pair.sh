#!/usr/bin/env bash
# Two "hosts" (network namespaces) joined by an underlay link, each running tapbridge with one
# TAP and the other as its VXLAN remote: one L2 segment over UDP.
#
#   ns LAB-h1                                           ns LAB-h2
#   TAP LAB-t1 10.91.0.1/24 (mtu 1450, by itself)       TAP LAB-t2 10.91.0.2/24 (mtu 1450)
#        │                                                   │
#   tapbridge --remote 10.92.0.2:PORT ── veth underlay ── tapbridge --remote 10.92.0.1:PORT
#                     10.92.0.1/24                        10.92.0.2/24
#
# No mtu= needed: tapbridge measures the 1500-byte path to the remote and gives the TAPs it
# creates 1450, which leaves room for VXLAN's 50 bytes. Cleans up on exit.
# Run as root:
#
#   Examples/lab/vxlan-pair.sh      LAB=NAME (default vx$$) names the namespaces, TAPs and
#                                   bridges; PORT (default 4789) is the VXLAN port;
#                                   TAPBRIDGE=PATH (default .build/release/tapbridge)
set -euo pipefail
tb=${TAPBRIDGE:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/tapbridge}
[ -x "$tb" ] || { echo "build tapbridge first: swift build -c release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAPs)" >&2; exit 1; }

lab=${LAB:-vx$$}
port=${PORT:-4789}
logs=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	ip netns del "$lab-h1" 2>/dev/null || true
	ip netns del "$lab-h2" 2>/dev/null || true
	rm -rf "$logs"
}
trap cleanup EXIT

ip netns add "$lab-h1"
ip netns add "$lab-h2"
ip link add "$lab-u1" netns "$lab-h1" type veth peer name "$lab-u2" netns "$lab-h2"
for n in 1 2; do
	ip -n "$lab-h$n" addr add "10.92.0.$n/24" dev "$lab-u$n"
	ip -n "$lab-h$n" link set "$lab-u$n" up
	ip -n "$lab-h$n" link set lo up
done

for n in 1 2; do
	other=$((3 - n))
	ip netns exec "$lab-h$n" "$tb" --name "$lab-$n" --port "$lab-t$n" --remote "10.92.0.$other:$port" 2>"$logs/$n.log" &
	pids+=($!)
done
for n in 1 2; do
	"$tb" wait --name "$lab-$n" >/dev/null || { cat "$logs/$n.log" >&2; exit 1; }
	ip -n "$lab-h$n" addr add "10.91.0.$n/24" dev "$lab-t$n"
	ip -n "$lab-h$n" link set "$lab-t$n" up
done

ip netns exec "$lab-h1" ping -c 3 -W 2 10.91.0.2
[ "$(ip -n "$lab-h1" -o link show "$lab-t1" | grep -o 'mtu [0-9]*')" = "mtu 1450" ] || { echo "the TAP's MTU is not 1450" >&2; exit 1; }
ip netns exec "$lab-h2" ping -c 3 -W 2 -M do -s 1422 10.91.0.1   # a full 1450-byte packet
echo "vxlan pair: both ways, full-size frames included"
