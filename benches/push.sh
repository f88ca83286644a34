#!/usr/bin/env bash
# hybridfs push and clone benchmark: incremental push next to rsync, restic and juicefs sync,
# push throughput vs rclone, push cost vs volume size, clone + mount time (see
# benches/README.md, "Push and clone").
# All the work (and the cleanup: unmount, kill the mount processes and the S3 server, remove
# the scratch dir, also on Ctrl-C / SIGTERM / errors) is done by push.py; this wrapper only
# finds Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "push.sh: needs Python >= 3.11 (set PYTHON)" >&2
  exit 2
fi
export BENCH_ARGV0="benches/push.sh"
exec "$py" "$here/push.py" "$@"
