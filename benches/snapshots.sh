#!/usr/bin/env bash
# hybridfs snapshots benchmark: snapshot create / diff time vs volume size, and write
# throughput right after a snapshot (see benches/README.md, "Snapshots").
# All the work (and the cleanup: unmount, kill, remove the scratch dir, also on
# Ctrl-C / SIGTERM / errors) is done by snapshots.py; this wrapper only finds Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "snapshots.sh: needs Python >= 3.11 (set PYTHON)" >&2
  exit 2
fi
export BENCH_ARGV0="benches/snapshots.sh"
exec "$py" "$here/snapshots.py" "$@"
