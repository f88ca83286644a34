#!/usr/bin/env bash
# Sequential write + fsync on a mount with mount.blocks_to_store = on-fsync next to the default
# (later) and the local disk, against one SeaweedFS S3 server on 127.0.0.1 (see
# benches/README.md, "Blocks to the store at fsync"). All the work and the cleanup is done by
# fsync_store.py; this wrapper only finds Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "fsync_store.sh: needs Python >= 3.11 (set PYTHON)" >&2
  exit 2
fi
export BENCH_ARGV0="benches/fsync_store.sh"
exec "$py" "$here/fsync_store.py" "$@"
