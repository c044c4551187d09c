#!/usr/bin/env bash
# Two "hosts" (network namespaces) joined by an underlay link, each running tapbridge with one
# TAP and the other as its VXLAN remote: one L2 segment over UDP.
#
#   ns host1-PID                                        ns host2-PID
#   TAP vx1-PID 10.91.0.1/24 (mtu 1450, by itself)      TAP vx2-PID 10.91.0.2/24 (mtu 1450)
#        │                                                   │
#   tapbridge --remote 10.92.0.2:4789 ── veth underlay ── tapbridge --remote 10.92.0.1:4789
#                     10.92.0.1/24                        10.92.0.2/24
#
# No mtu= needed: tapbridge measures the 1500-byte path to the remote and gives the TAPs it
# creates 1450, which leaves room for VXLAN's 50 bytes. Cleans up on exit.
# Run as root: Examples/lab/vxlan-pair.sh   (uses .build/release/tapbridge, or $TAPBRIDGE)
set -euo pipefail
tb=${TAPBRIDGE:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/tapbridge}
[ -x "$tb" ] || { echo "build tapbridge first: swift build -c release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TAPs)" >&2; exit 1; }

id=$$
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	ip netns del "host1-$id" 2>/dev/null || true
	ip netns del "host2-$id" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "host1-$id"
ip netns add "host2-$id"
ip link add "ul1-$id" netns "host1-$id" type veth peer name "ul2-$id" netns "host2-$id"
for n in 1 2; do
	ip -n "host$n-$id" addr add "10.92.0.$n/24" dev "ul$n-$id"
	ip -n "host$n-$id" link set "ul$n-$id" up
	ip -n "host$n-$id" link set lo up
done

for n in 1 2; do
	other=$((3 - n))
	ip netns exec "host$n-$id" "$tb" --name "vx$n-$id" --port "vx$n-$id" --remote "10.92.0.$other:4789" \
		2>"/tmp/vx$n-$id.log" &
	pids+=($!)
done
for n in 1 2; do
	for _ in $(seq 50); do ip -n "host$n-$id" link show "vx$n-$id" >/dev/null 2>&1 && break; sleep 0.1; done
	ip -n "host$n-$id" addr add "10.91.0.$n/24" dev "vx$n-$id"
	ip -n "host$n-$id" link set "vx$n-$id" up
done

ip netns exec "host1-$id" ping -c 3 -W 2 10.91.0.2
[ "$(ip -n "host1-$id" -o link show "vx1-$id" | grep -o 'mtu [0-9]*')" = "mtu 1450" ] || { echo "the TAP's MTU is not 1450" >&2; exit 1; }
ip netns exec "host2-$id" ping -c 3 -W 2 -M do -s 1422 10.91.0.1   # a full 1450-byte packet
echo "vxlan pair: both ways, full-size frames included"
