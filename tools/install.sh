#!/usr/bin/env bash
# Install hybridfs on this machine (as root): hybridctl and hybrid-agent, the mount helper
# behind `mount -t fuse.hybridfs` and fstab lines, the systemd units, an example config, shell
# completions and man pages.
#
#   tools/install.sh [--prefix /usr/local] [--destdir DIR] [--no-build]
#
# --prefix: where binaries, man pages and completions go (default /usr/local; a package uses
# /usr). --destdir: stage everything under DIR instead of / (for packaging; nothing on this
# machine changes, systemd is not told). --no-build: install what $CARGO_TARGET_DIR/release
# holds. Idempotent: an existing /etc/hybridfs/hybridfs.toml is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=/usr/local
DESTDIR=
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --destdir) DESTDIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "install.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then echo "install.sh: run as root (or stage with --destdir DIR)" >&2; exit 2; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hybridfs-target}
if [ "$BUILD" = 1 ]; then cargo build --release -p hybridctl -p hybrid-agent; fi
REL=$CARGO_TARGET_DIR/release
D=$DESTDIR
# zsh: Debian's own packages use vendor-completions; /usr/local has site-functions.
ZSH=$PREFIX/share/zsh/site-functions
[ "$PREFIX" = /usr ] && ZSH=/usr/share/zsh/vendor-completions

install -d "$D$PREFIX/bin" "$D/usr/sbin" "$D/etc/hybridfs" "$D/lib/systemd/system" \
  "$D$PREFIX/share/man/man1" "$D$PREFIX/share/bash-completion/completions" \
  "$D$ZSH" "$D$PREFIX/share/fish/vendor_completions.d"
install -m 0755 "$REL/hybridctl" "$D$PREFIX/bin/hybridctl"
install -m 0755 "$REL/hybrid-agent" "$D$PREFIX/bin/hybrid-agent"
# mount(8) runs /sbin/mount.TYPE (on Debian /sbin is /usr/sbin); called by that name hybridctl
# takes mount(8)'s arguments and mounts in the background.
ln -sfn "$PREFIX/bin/hybridctl" "$D/usr/sbin/mount.fuse.hybridfs"
for unit in dist/systemd/*.service; do
  sed "s|/usr/bin/|$PREFIX/bin/|g" "$unit" > "$D/lib/systemd/system/$(basename "$unit")"
  chmod 0644 "$D/lib/systemd/system/$(basename "$unit")"
done
[ -e "$D/etc/hybridfs/hybridfs.toml" ] || install -m 0600 dist/hybridfs.toml "$D/etc/hybridfs/hybridfs.toml"
ctl=$REL/hybridctl
# The staged binary writes them; no config of this machine may stop it (an empty one).
empty=$(mktemp); trap 'rm -f "$empty"' EXIT
HYBRIDFS_CONFIG=$empty "$ctl" completions bash > "$D$PREFIX/share/bash-completion/completions/hybridctl"
HYBRIDFS_CONFIG=$empty "$ctl" completions zsh > "$D$ZSH/_hybridctl"
HYBRIDFS_CONFIG=$empty "$ctl" completions fish > "$D$PREFIX/share/fish/vendor_completions.d/hybridctl.fish"
HYBRIDFS_CONFIG=$empty "$ctl" man "$D$PREFIX/share/man/man1" >/dev/null
gzip -9nf "$D$PREFIX"/share/man/man1/hybridctl*.1

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed hybridfs under ${D:-/}: $PREFIX/bin/{hybridctl,hybrid-agent}, /usr/sbin/mount.fuse.hybridfs, units hybridfs@.service and hybrid-agent.service"
