#!/usr/bin/env bash
# Creates N (default 1,000,000) empty files in a fresh hybridfs volume, from J parallel
# shells, in subdirectories of 10,000 files, and reports the mount process's memory
# (VmRSS / VmHWM from /proc/PID/status). Target: peak RSS < 256 MiB.
# See benches/README.md. Everything lives in a mktemp scratch dir; the trap unmounts,
# kills what this script started and removes the scratch dir, also on failure/Ctrl-C.
set -euo pipefail

files=1000000 jobs=4 per_dir=10000 json="" keep=0 scratch="${TMPDIR:-/tmp}"
usage() {
  cat <<EOF
usage: $0 [--files N] [--jobs J] [--per-dir N] [--json FILE] [--scratch DIR] [--keep]
  --files N    files to create (default 1000000)
  --jobs J     parallel shells (default 4)
  --per-dir N  files per subdirectory (default 10000)
  --json FILE  also write the results as JSON
  --scratch D  parent of the scratch dir (default \$TMPDIR or /tmp)
  --keep       keep the scratch dir (volume) after unmounting
env: HYBRIDCTL (default \$HOME/.cache/hybridfs-target/release/hybridctl)
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --per-dir) per_dir="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in "$files" "$jobs" "$per_dir"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "$0: bad number: $v" >&2; exit 2; }
done

HYBRIDCTL="${HYBRIDCTL:-$HOME/.cache/hybridfs-target/release/hybridctl}"
[ -x "$HYBRIDCTL" ] || { echo "$0: hybridctl not found at $HYBRIDCTL (set HYBRIDCTL)" >&2; exit 2; }
bin_mtime="$(date -Iseconds -r "$HYBRIDCTL")"

log() { echo "[$(date +%T)] $*" >&2; }
root="$(mktemp -d "$scratch/hybridfs-million.XXXXXX")"
export HYBRIDFS_HOME="$root/home"
mp="$root/mnt"
vol="$HYBRIDFS_HOME/volumes/million"
pid="" sampler="" workers=()

is_mounted() { awk -v mp="$1" '$5 == mp { f = 1 } END { exit !f }' /proc/self/mountinfo; }
fuse_minor() { awk -v mp="$1" '$5 == mp { split($3, a, ":"); print a[2] }' /proc/self/mountinfo; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  for w in "${workers[@]}"; do kill "$w" 2>/dev/null; done
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  if is_mounted "$mp"; then
    log "cleanup: unmounting $mp"
    timeout 300 "$HYBRIDCTL" umount "$mp" || true
    if is_mounted "$mp"; then
      fusermount -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null
    fi
    if is_mounted "$mp"; then
      m="$(fuse_minor "$mp")"
      [ -n "$m" ] && [ -w "/sys/fs/fuse/connections/$m/abort" ] &&
        echo 1 > "/sys/fs/fuse/connections/$m/abort"
      fusermount -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
    fi
  fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "cleanup: killing mount process $pid"
    kill "$pid" 2>/dev/null; sleep 3; kill -9 "$pid" 2>/dev/null
  fi
  if is_mounted "$mp"; then
    log "NOT removing $root: $mp is still mounted"
  elif [ "$keep" = 1 ]; then
    log "kept $root"
  else
    rm -rf "$root"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || log "cannot drop caches"; }

mkdir -p "$HYBRIDFS_HOME" "$mp"
log "scratch: $root; files=$files jobs=$jobs per_dir=$per_dir"
"$HYBRIDCTL" format million >/dev/null
"$HYBRIDCTL" mount million "$mp" -d
pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$vol/mount.json")"
log "mounted at $mp, mount process pid $pid, RSS $(mib "$(status_kib "$pid" VmRSS)") MiB"

# sample the peak (VmHWM) every second, so the umount phase is covered too
(
  while kill -0 "$pid" 2>/dev/null; do
    h="$(status_kib "$pid" VmHWM)"; [ -n "$h" ] && echo "$h" > "$root/hwm"
    sleep 1
  done
) &
sampler=$!

ndirs=$(( (files + per_dir - 1) / per_dir ))
t0="$(now)"
for ((j = 0; j < jobs; j++)); do
  (
    for ((d = j; d < ndirs; d += jobs)); do
      n=$per_dir
      (( (d + 1) * per_dir > files )) && n=$(( files - d * per_dir ))
      dir="$mp/d$(printf %05d "$d")"
      mkdir "$dir"
      for ((i = 0; i < n; i++)); do : > "$dir/f$i"; done
    done
  ) &
  workers+=($!)
done
fail=0
for w in "${workers[@]}"; do wait "$w" || fail=1; done
workers=()
t1="$(now)"
[ "$fail" = 0 ] || { log "a creating shell failed"; exit 1; }
create_s="$(elapsed "$t0" "$t1")"
rate="$(awk -v n="$files" -v s="$create_s" 'BEGIN { printf "%.0f", n / s }')"
rss_created="$(status_kib "$pid" VmRSS)"
log "created $files files in ${create_s}s ($rate files/s); RSS $(mib "$rss_created") MiB"

drop_caches; sleep 5   # kernel forgets the inodes -> FUSE FORGETs
rss_dropped="$(status_kib "$pid" VmRSS)"
log "after drop_caches: RSS $(mib "$rss_dropped") MiB"

t0="$(now)"
count="$(find "$mp" -type f | wc -l)"
walk_s="$(elapsed "$t0" "$(now)")"
rss_walked="$(status_kib "$pid" VmRSS)"
log "find: $count files in ${walk_s}s; RSS $(mib "$rss_walked") MiB"
[ "$count" = "$files" ] || log "WARNING: find counted $count files, expected $files"

hwm_mounted="$(status_kib "$pid" VmHWM)"
t0="$(now)"
"$HYBRIDCTL" umount "$mp"
umount_s="$(elapsed "$t0" "$(now)")"
sleep 1
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=""
peak="$(cat "$root/hwm" 2>/dev/null || echo 0)"
[ "${hwm_mounted:-0}" -gt "$peak" ] && peak="$hwm_mounted"
verdict=$([ "$peak" -lt $((256 * 1024)) ] && echo ok || echo MISS)

cat <<EOF

hybridfs million-files  $(date -Iseconds)  files=$files jobs=$jobs per_dir=$per_dir
hybridctl: $HYBRIDCTL (built $bin_mtime)
| measure                                   | value |
|-------------------------------------------|-------|
| create (s)                                | $create_s |
| create (files/s)                          | $rate |
| RSS after create (MiB)                    | $(mib "$rss_created") |
| RSS after drop_caches (MiB)               | $(mib "$rss_dropped") |
| find -type f, cold (s) / files counted    | $walk_s / $count |
| RSS after find (MiB)                      | $(mib "$rss_walked") |
| umount (s)                                | $umount_s |
| peak RSS, VmHWM incl. umount (MiB)        | $(mib "$peak") (target < 256: $verdict) |
EOF

if [ -n "$json" ]; then
  cat > "$json" <<EOF
{"date": "$(date -Iseconds)", "hybridctl": "$HYBRIDCTL", "hybridctl_mtime": "$bin_mtime", "files": $files, "jobs": $jobs, "per_dir": $per_dir,
 "create_s": $create_s, "create_files_per_s": $rate,
 "rss_after_create_kib": ${rss_created:-null}, "rss_after_drop_caches_kib": ${rss_dropped:-null},
 "find_s": $walk_s, "find_count": $count, "rss_after_find_kib": ${rss_walked:-null},
 "umount_s": $umount_s, "peak_rss_kib": $peak, "target_peak_rss_kib": 262144,
 "ok": $([ "$verdict" = ok ] && echo true || echo false)}
EOF
  log "wrote $json"
fi
[ "$count" = "$files" ]
