#!/usr/bin/env bash
# Builds tapbridge and installs it: the binary, the man page, the systemd unit and an example
# config. A script, not a Debian package: it needs nothing but the Swift toolchain and works
# on any distribution; DESTDIR lets a packager stage the files instead.
#
#   Examples/install.sh                 build (release) and install, as root
#   Examples/install.sh --no-build      install the .build/release/tapbridge there is
#   Examples/install.sh --uninstall     remove what it installed (never /etc/tapbridge/NAME.yaml)
#
#   PREFIX   (default /usr/local)  the binary in PREFIX/bin, the man page in
#                                  PREFIX/share/man/man1 (where `man tapbridge` looks)
#   UNITDIR  (default /etc/systemd/system)  tapbridge@.service, its ExecStart set to the
#                                  installed binary
#   CONFDIR  (default /etc/tapbridge)  example.yaml; tapbridge@NAME reads CONFDIR/NAME.yaml
#   DESTDIR  (default empty)       a staging root in front of every path
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
bindir=$prefix/bin
mandir=$prefix/share/man/man1
unitdir=${UNITDIR:-/etc/systemd/system}
confdir=${CONFDIR:-/etc/tapbridge}
dest=${DESTDIR:-}

if [ "${1:-}" = "--uninstall" ]; then
	rm -f "$dest$bindir/tapbridge" "$dest$mandir/tapbridge.1" "$dest$unitdir/tapbridge@.service" "$dest$confdir/example.yaml"
	echo "removed tapbridge from $dest$prefix, $dest$unitdir and $dest$confdir/example.yaml"
	exit 0
fi

if [ "${1:-}" != "--no-build" ]; then
	(cd "$root" && swift build -c release --product tapbridge)
fi
[ -x "$root/.build/release/tapbridge" ] || { echo "no .build/release/tapbridge: run without --no-build" >&2; exit 1; }
install -d "$dest$bindir" "$dest$mandir" "$dest$unitdir" "$dest$confdir"
install -m 0755 "$root/.build/release/tapbridge" "$dest$bindir/tapbridge"
install -m 0644 "$root/Docs/tapbridge.1" "$dest$mandir/tapbridge.1"
sed "s#^ExecStart=/usr/local/bin/tapbridge #ExecStart=$bindir/tapbridge #" "$root/Examples/systemd/tapbridge@.service" >"$dest$unitdir/tapbridge@.service"
chmod 0644 "$dest$unitdir/tapbridge@.service"
install -m 0644 "$root/Examples/tapbridge.yaml" "$dest$confdir/example.yaml"
echo "installed $bindir/tapbridge, $mandir/tapbridge.1, $unitdir/tapbridge@.service, $confdir/example.yaml${dest:+ (under $dest)}"
echo "next: write $confdir/NAME.yaml, then: systemctl daemon-reload && systemctl enable --now tapbridge@NAME"
