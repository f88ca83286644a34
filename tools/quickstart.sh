#!/usr/bin/env bash
# Build hybridfs and mount a volume at /mnt/hybrid on the embedded default store.
# Run as root on Debian 12. Idempotent: re-running rebuilds and remounts.
#   VOLUME (default: main), MOUNTPOINT (default: /mnt/hybrid), HYBRIDFS_HOME (default: /var/lib/hybridfs)
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUME=${VOLUME:-main}
MOUNTPOINT=${MOUNTPOINT:-/mnt/hybrid}

if [ "$(id -u)" != 0 ]; then echo "quickstart: run as root (mounting needs /dev/fuse and allow_other)" >&2; exit 2; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq fuse3 libclang-dev clang pkg-config build-essential curl >/dev/null
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hybridfs-target}
cargo build --release -p hybridctl
install -m 0755 "$CARGO_TARGET_DIR/release/hybridctl" /usr/local/bin/hybridctl
# The helper behind `mount -t fuse.hybridfs NAME DIR` and fstab lines.
ln -sf /usr/local/bin/hybridctl /sbin/mount.fuse.hybridfs

if mountpoint -q "$MOUNTPOINT" 2>/dev/null; then hybridctl umount "$MOUNTPOINT" || umount -l "$MOUNTPOINT"; fi
hybridctl status "$VOLUME" >/dev/null 2>&1 || hybridctl format "$VOLUME"
mkdir -p "$MOUNTPOINT"
hybridctl mount "$VOLUME" "$MOUNTPOINT" -d
hybridctl status "$VOLUME"
