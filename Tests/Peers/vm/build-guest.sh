#!/usr/bin/env bash
# Builds a tiny Linux guest for the VM test: Debian's cloud kernel (downloaded as a package,
# unpacked, not installed) and an initramfs of busybox-static, the virtio-net modules and
# guest-init.sh. Usage: build-guest.sh DIR  ->  DIR/vmlinuz, DIR/initrd.gz (reused if present).
set -euo pipefail
out=${1:?usage: build-guest.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] && [ "$out/initrd.gz" -nt "$here/guest-init.sh" ]; then exit 0; fi
[ -x /bin/busybox ] || { echo "needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
command -v cpio >/dev/null || { echo "needs cpio (apt-get install cpio)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# the package that names the current cloud kernel, then that kernel
apt-get download linux-image-cloud-amd64 >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download linux-image-cloud-amd64 >/dev/null 2>&1; } ||
	{ echo "cannot download linux-image-cloud-amd64 from Debian's archive" >&2; exit 1; }
image=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | grep -o 'linux-image-[^ ,]*')
apt-get download "$image" >/dev/null 2>&1 || { echo "cannot download $image" >&2; exit 1; }
dpkg-deb -x "$image"_*.deb kernel
version=$(ls kernel/lib/modules)
mkdir -p initramfs/bin initramfs/modules initramfs/proc initramfs/sys initramfs/dev
cp /bin/busybox initramfs/bin/busybox
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
	f=$(find kernel/lib/modules/"$version" -name "$m.ko*" | head -1)
	[ -n "$f" ] || continue  # built in
	case "$f" in
	*.xz) xz -dc "$f" >initramfs/modules/"$m".ko ;;
	*.zst) zstd -qdc "$f" >initramfs/modules/"$m".ko ;;
	*) cp "$f" initramfs/modules/"$m".ko ;;
	esac
done
cp "$here/guest-init.sh" initramfs/init
chmod +x initramfs/init
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.gz.tmp"
cp kernel/boot/vmlinuz-* "$out/vmlinuz"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
