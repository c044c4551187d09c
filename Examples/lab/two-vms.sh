#!/usr/bin/env bash
# Runs the lab of two-vms.yaml with two small test guests (a Debian kernel and a busybox
# initramfs, built once by Tests/Peers/vm/build-guest.sh) under QEMU run as an unprivileged
# user: each guest pings the other, the namespace host pings both, and everything stops. Run
# as root:
#
#   Examples/lab/two-vms.sh     LAB=NAME (default vm$$), GROUP (default nogroup) and
#                               QEMU_USER (default nobody): who runs QEMU and may open the
#                               socket; GUEST_DIR (default /var/tmp/tapbridge-guest);
#                               TAPBRIDGE=PATH (default .build/release/tapbridge)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tb=${TAPBRIDGE:-$here/../../.build/release/tapbridge}
[ -x "$tb" ] || { echo "build tapbridge first: swift build -c release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (the bridge; QEMU runs as \$QEMU_USER)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "needs qemu-system-x86_64 (apt-get install qemu-system-x86)" >&2; exit 1; }
export LAB=${LAB:-vm$$} GROUP=${GROUP:-nogroup}
user=${QEMU_USER:-nobody}
guest=${GUEST_DIR:-/var/tmp/tapbridge-guest}
bash "$here/../../Tests/Peers/vm/build-guest.sh" "$guest"

logs=$(mktemp -d)
bridge=
vms=()
cleanup() {
	for p in "${vms[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	[ -n "$bridge" ] && kill "$bridge" 2>/dev/null && wait "$bridge" 2>/dev/null
	rm -rf "$logs"
}
trap cleanup EXIT

"$tb" --config "$here/two-vms.yaml" 2>"$logs/tapbridge.log" &
bridge=$!
"$tb" wait --name "$LAB" || { cat "$logs/tapbridge.log" >&2; exit 1; }
for k in 1 2; do
	setpriv --reuid="$user" --regid="$GROUP" --clear-groups qemu-system-x86_64 -accel tcg -cpu max -m 256 -nographic -no-reboot \
		-kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" \
		-append "console=ttyS0 quiet panic=-1 tb.addr=10.93.0.1$k/24 tb.ping=10.93.0.1$((3 - k))" \
		-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=/run/$LAB.sock" \
		-device "virtio-net-pci,netdev=n0,mac=52:54:00:93:00:0$k" >"$logs/vm$k.log" 2>&1 </dev/null &
	vms+=($!)
done

# the host reaches both while they ping each other (each stays up 20 s after its first answer)
reached=0
for k in 1 2; do
	for _ in $(seq 120); do
		if ip netns exec "$LAB-h" ping -c 1 -W 1 "10.93.0.1$k" >/dev/null 2>&1; then reached=$((reached + 1)); break; fi
	done
done
"$tb" show ports --name "$LAB"
wait "${vms[@]}" || true
vms=()
answered=$(cat "$logs/vm1.log" "$logs/vm2.log" | grep -c "TB-PING 0" || true)
echo "two VMs on a stream socket: $answered/2 reached the other, the host reached $reached/2"
[ "$answered" = 2 ] && [ "$reached" = 2 ]
