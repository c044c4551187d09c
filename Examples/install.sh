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
#                                  (the unit's --config is set to it; not under /home, /root or
#                                  /run/user, which the unit's ProtectHome=yes hides)
#   DESTDIR  (default empty)       a staging root in front of every path
#   TAPBRIDGE_USER  (default tapbridge)  the system user and group the unit runs as, made here
#                                  (useradd --system, no home, no login shell) if missing;
#                                  with DESTDIR, only named in the unit (the packager makes it).
#                                  --uninstall keeps it (files it owned may remain)
#
# Check the installed unit as systemd will read it (the template is verified as tapbridge@i):
#   systemd-analyze verify UNITDIR/tapbridge@.service
# (it runs `man tapbridge` for the unit's Documentation=: with a PREFIX that man does not search,
# give it MANPATH=PREFIX/share/man)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/usr/local}
bindir=$prefix/bin
mandir=$prefix/share/man/man1
unitdir=${UNITDIR:-/etc/systemd/system}
confdir=${CONFDIR:-/etc/tapbridge}
dest=${DESTDIR:-}
user=${TAPBRIDGE_USER:-tapbridge}
case "$user" in
''|*[!a-z0-9_-]*|-*) echo "TAPBRIDGE_USER=$user: a user name of lower-case letters, digits, - and _" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--uninstall" ]; then
	rm -f "$dest$bindir/tapbridge" "$dest$mandir/tapbridge.1" "$dest$unitdir/tapbridge@.service" "$dest$confdir/example.yaml"
	echo "removed tapbridge from $dest$prefix, $dest$unitdir and $dest$confdir/example.yaml (user $user kept)"
	exit 0
fi

case "$confdir" in
/home|/home/*|/root|/root/*|/run/user|/run/user/*)
	echo "CONFDIR=$confdir: the unit runs with ProtectHome=yes, which hides /home, /root and /run/user; choose a directory outside them" >&2
	exit 2 ;;
/*) ;;
*) echo "CONFDIR=$confdir: give an absolute path (the unit reads it from any working directory)" >&2; exit 2 ;;
esac

if [ "${1:-}" != "--no-build" ]; then
	(cd "$root" && swift build -c release --product tapbridge)
fi
[ -x "$root/.build/release/tapbridge" ] || { echo "no .build/release/tapbridge: run without --no-build" >&2; exit 1; }
install -d "$dest$bindir" "$dest$mandir" "$dest$unitdir" "$dest$confdir"
install -m 0755 "$root/.build/release/tapbridge" "$dest$bindir/tapbridge"
install -m 0644 "$root/Docs/tapbridge.1" "$dest$mandir/tapbridge.1"
sed -e "s#^ExecStart=/usr/local/bin/tapbridge #ExecStart=$bindir/tapbridge #" \
	-e "s#--config /etc/tapbridge/%i.yaml#--config $confdir/%i.yaml#" \
	-e "s#^User=tapbridge\$#User=$user#" -e "s#^Group=tapbridge\$#Group=$user#" \
	"$root/Examples/systemd/tapbridge@.service" >"$dest$unitdir/tapbridge@.service"
grep -qxF "ExecStart=$bindir/tapbridge --name %i --config $confdir/%i.yaml" "$dest$unitdir/tapbridge@.service" ||
	{ echo "the unit's ExecStart was not rewritten (Examples/systemd/tapbridge@.service changed?)" >&2; exit 1; }
grep -qxF "User=$user" "$dest$unitdir/tapbridge@.service" ||
	{ echo "the unit's User= was not rewritten (Examples/systemd/tapbridge@.service changed?)" >&2; exit 1; }
chmod 0644 "$dest$unitdir/tapbridge@.service"
# the unit's user: a system user of its own (never nobody, whose other processes could change
# the bridge), made unless it exists; a staged install leaves that to the package
made=""
if [ -z "$dest" ] && ! id -u "$user" >/dev/null 2>&1; then
	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
	made=", user $user made"
fi
install -m 0644 "$root/Examples/tapbridge.yaml" "$dest$confdir/example.yaml"
echo "installed $bindir/tapbridge, $mandir/tapbridge.1, $unitdir/tapbridge@.service (as user $user$made), $confdir/example.yaml${dest:+ (under $dest)}"
echo "next: write $confdir/NAME.yaml, then: systemctl daemon-reload && systemctl enable --now tapbridge@NAME"
