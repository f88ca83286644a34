#!/usr/bin/env bash
# Side-by-side benchmark: local fs vs hybridfs vs JuiceFS (see benches/README.md).
# All the work (and the cleanup: unmount, kill, remove scratch dirs, also on
# Ctrl-C / SIGTERM / errors) is done by bench.py; this wrapper only finds Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "run.sh: needs Python >= 3.11 (set PYTHON)" >&2
  exit 2
fi
export BENCH_ARGV0="benches/run.sh"
exec "$py" "$here/bench.py" "$@"
