#!/bin/sh
# hybrid-agent `volume.credentials_command` for a SeaweedFS S3 store (doc/AGENT.md, "Scoped
# store credentials"): mints a SeaweedFS identity per burst node that may read the bucket and
# write only the volume's shared content-addressed objects (blocks/, packs/) and the node's
# own branch (branches/BRANCH/): not main's head, not another node's branch. Revokes it when
# the node is gone. Prints the credentials as one JSON object (never logged by the agent).
#
# Needs `weed` on PATH and WEED_MASTER, WEED_FILER (host:port) of the cluster; the S3 gateway
# must keep its identities in the filer (started without -s3.config), so `s3.configure`
# changes reach it at once. The agent sets HYBRID_AGENT_ACTION (mint|revoke), _NODE, _BRANCH,
# _VOLUME and _STORE (s3://BUCKET/PREFIX).
set -eu
store=${HYBRID_AGENT_STORE#s3://}
bucket=${store%%/*}
prefix=${store#"$bucket"}
prefix=${prefix#/}
base="$bucket/${prefix:+$prefix/}$HYBRID_AGENT_VOLUME"
user="hybrid-$HYBRID_AGENT_NODE"
weed_shell() {
    out=$(echo "$1" | weed shell -master="$WEED_MASTER" -filer="$WEED_FILER" 2>&1) || { echo "weed shell: $out" | tail -n 3 >&2; exit 1; }
    case "$out" in *rror*) echo "weed shell: $(echo "$out" | grep -i error | tail -n 1)" >&2; exit 1 ;; esac
}
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
case "${HYBRID_AGENT_ACTION:-}" in
mint)
    key=$(hex 10)
    secret=$(hex 20)
    actions="Read:$bucket,List:$bucket,Write:$base/blocks/*,Write:$base/packs/*,Write:$base/branches/$HYBRID_AGENT_BRANCH/*"
    weed_shell "s3.configure -user=$user -access_key=$key -secret_key=$secret -actions=$actions -apply"
    printf '{"AWS_ACCESS_KEY_ID":"%s","AWS_SECRET_ACCESS_KEY":"%s"}\n' "$key" "$secret"
    ;;
revoke)
    weed_shell "s3.configure -user=$user -delete -apply"
    ;;
*)
    echo "HYBRID_AGENT_ACTION must be mint or revoke" >&2
    exit 2
    ;;
esac
