#!/bin/busybox sh
# PID 1 of the test guest (modules in dependency order, read from their depends= fields). Kernel command line: tb.addr=CIDR tb.peer=IP tb.port=N tb.bytes=N [tb.listen=N],
# or tb.addr=CIDR tb.ping=IP.
# Brings eth0 (virtio-net) up, sends tb.bytes bytes of a known pattern to tb.peer:tb.port over
# TCP, prints "TB-RESULT <nc exit status>" on the console; with tb.listen, then accepts one TCP
# connection on that port and prints "TB-RECEIVED <bytes> <md5>" of what it carried; powers off. With tb.ping: pings
# that address until it answers (at most 90 tries), prints "TB-PING <0 if it answered>", stays
# up 20 s more to answer the other side's pings, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
	[ -f /modules/$m.ko ] && insmod /modules/$m.ko
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
for kv in $(cat /proc/cmdline); do
	case "$kv" in tb.*=*) k=${kv%%=*}; k=${k#tb.}; eval "tb_$k=${kv#*=}" ;; esac
done
ip link set lo up
ip link set eth0 up
ip addr add "$tb_addr" dev eth0
echo "TB-OFFLOADS $(cat /sys/class/net/eth0/features 2>/dev/null)"
if [ -n "${tb_ping:-}" ]; then
	rc=1
	i=0
	while [ $i -lt 90 ]; do
		if ping -c 1 -W 1 "$tb_ping" >/dev/null 2>&1; then rc=0; break; fi
		i=$((i + 1))
	done
	echo "TB-PING $rc"
	sleep 20
	poweroff -f
fi
rc=1
i=0
while [ $i -lt 60 ]; do
	if yes tapbridge | head -c "$tb_bytes" | nc "$tb_peer" "$tb_port"; then rc=0; break; fi
	i=$((i + 1))
	sleep 1
done
echo "TB-RESULT $rc"
if [ -n "${tb_listen:-}" ]; then
	# the other way: one TCP connection into the guest, read to its end
	echo "TB-LISTENING $tb_listen"
	timeout 120 nc -l -p "$tb_listen" > /received
	echo "TB-RECEIVED $(wc -c < /received) $(md5sum < /received | cut -d ' ' -f 1)"
fi
poweroff -f
