#!/usr/bin/env bash
# Creates N (default 1,000,000) empty files in a fresh hybridfs volume, from J parallel
# shells (or, with --fill core, with hybridfs's own create call from an unmounted volume:
# fs/node/examples/fill_volume.rs), in subdirectories of 10,000 files, and reports the mount
# process's memory (VmRSS / VmHWM from /proc/PID/status) and a cold `find`. Target: peak RSS
# < 256 MiB at 1M files, < 512 MiB at 10M. With several sizes (--files 1000000,10000000) the
# volume grows from one to the next in the same run, and each size gets its own mount: the
# snapshot create and diff times (--snapshots), a cold find, the peak RSS of that mount.
# See benches/README.md. Everything lives in a mktemp scratch dir; the trap unmounts,
# kills what this script started and removes the scratch dir, also on failure/Ctrl-C.
set -euo pipefail

files=1000000 jobs=4 per_dir=10000 json="" keep=0 scratch="${TMPDIR:-/tmp}" fill=shells snapshots=0 baseline=""
usage() {
  cat <<EOF
usage: $0 [--files N[,N2...]] [--fill shells|core] [--snapshots] [--jobs J] [--per-dir N]
          [--json FILE] [--scratch DIR] [--keep]
  --files N    files to create (default 1000000); a list of growing sizes measures each
  --fill F     shells: the files are created through the mount by J shells (': > f');
               core: by fill_volume (Volume::create_node, the call a FUSE create makes,
               without the kernel), from the unmounted volume, J threads
  --snapshots  per size: time 'snapshot create', a change (1000 files rewritten), a
               second snapshot and 'diff' between the two
  --baseline B per size, after the measured mount: the same volume mounted by hybridctl
               binary B (an older build), drop caches, cold find, its RSS (before/after)
  --jobs J     parallel shells (default 4)
  --per-dir N  files per subdirectory (default 10000)
  --json FILE  also write the results as JSON
  --scratch D  parent of the scratch dir (default \$TMPDIR or /tmp)
  --keep       keep the scratch dir (volume) after unmounting
env: HYBRIDCTL (default \$HOME/.cache/hybridfs-target/release/hybridctl)
     FILL_VOLUME (--fill core; default \$HOME/.cache/hybridfs-target/release/examples/fill_volume,
     built by: cargo build --release -p hybridfs-node --example fill_volume)
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --files) files="$2"; shift 2 ;;
    --fill) fill="$2"; shift 2 ;;
    --snapshots) snapshots=1; shift ;;
    --baseline) baseline="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --per-dir) per_dir="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
IFS=, read -ra sizes <<< "$files"
for v in "${sizes[@]}" "$jobs" "$per_dir"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "$0: bad number: $v" >&2; exit 2; }
done
prev=0
for v in "${sizes[@]}"; do
  [ "$v" -gt "$prev" ] || { echo "$0: --files must grow: $files" >&2; exit 2; }
  [ "$prev" = 0 ] || [ $((prev % per_dir)) = 0 ] || { echo "$0: each size but the last must be a multiple of --per-dir" >&2; exit 2; }
  prev=$v
done
case "$fill" in shells|core) ;; *) echo "$0: --fill shells|core" >&2; exit 2 ;; esac

HYBRIDCTL="${HYBRIDCTL:-$HOME/.cache/hybridfs-target/release/hybridctl}"
[ -x "$HYBRIDCTL" ] || { echo "$0: hybridctl not found at $HYBRIDCTL (set HYBRIDCTL)" >&2; exit 2; }
bin_mtime="$(date -Iseconds -r "$HYBRIDCTL")"
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "$0: baseline hybridctl not found at $baseline" >&2; exit 2; }
bin="$HYBRIDCTL"
FILL_VOLUME="${FILL_VOLUME:-$HOME/.cache/hybridfs-target/release/examples/fill_volume}"
[ "$fill" = shells ] || [ -x "$FILL_VOLUME" ] || { echo "$0: fill_volume not found at $FILL_VOLUME (set FILL_VOLUME)" >&2; exit 2; }

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

# The mount's own counters (metrics.json, every 2 s): kernel references, metadata engine memory.
counter() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counters"].get(sys.argv[2], 0))' "$vol/metrics.json" "$1" 2>/dev/null || echo 0
}

mkdir -p "$HYBRIDFS_HOME" "$mp"
log "scratch: $root; files=$files fill=$fill jobs=$jobs per_dir=$per_dir"
"$HYBRIDCTL" format million >/dev/null

mount_vol() {
  "$bin" mount million "$mp" -d
  pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$vol/mount.json")"
  log "mounted at $mp, mount process pid $pid, RSS $(mib "$(status_kib "$pid" VmRSS)") MiB"
  rm -f "$root/hwm"
  # sample the peak (VmHWM) every second, so the umount phase is covered too
  (
    while kill -0 "$pid" 2>/dev/null; do
      h="$(status_kib "$pid" VmHWM)"; [ -n "$h" ] && echo "$h" > "$root/hwm"
      sleep 1
    done
  ) &
  sampler=$!
}

# Unmount; sets umount_s and peak (KiB).
umount_vol() {
  local hwm_mounted t0
  hwm_mounted="$(status_kib "$pid" VmHWM)"
  t0="$(now)"
  "$bin" umount "$mp"
  umount_s="$(elapsed "$t0" "$(now)")"
  sleep 1
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sampler="" pid=""
  peak="$(cat "$root/hwm" 2>/dev/null || echo 0)"
  [ "${hwm_mounted:-0}" -gt "$peak" ] && peak="$hwm_mounted"
  return 0
}

# Files made so far; directories d00000.. hold per_dir each.
have=0
# Grow the volume to $1 files through the mount (shells) or from the unmounted volume (core).
grow() {
  local target=$1 first_dir=$((have / per_dir)) t0 t1 fail=0
  local add=$((target - have)) ndirs
  ndirs=$(( (add + per_dir - 1) / per_dir ))
  t0="$(now)"
  if [ "$fill" = core ]; then
    "$FILL_VOLUME" "$HYBRIDFS_HOME" million "$add" "$per_dir" "$jobs" "$first_dir" > "$root/fill.json"
  else
    for ((j = 0; j < jobs; j++)); do
      (
        for ((d = j; d < ndirs; d += jobs)); do
          n=$per_dir
          (( (d + 1) * per_dir > add )) && n=$(( add - d * per_dir ))
          dir="$mp/d$(printf %05d "$((first_dir + d))")"
          mkdir "$dir"
          for ((i = 0; i < n; i++)); do : > "$dir/f$i"; done
        done
      ) &
      workers+=($!)
    done
    for w in "${workers[@]}"; do wait "$w" || fail=1; done
    workers=()
  fi
  t1="$(now)"
  [ "$fail" = 0 ] || { log "a creating shell failed"; exit 1; }
  create_s="$(elapsed "$t0" "$t1")"
  rate="$(awk -v n="$add" -v s="$create_s" 'BEGIN { printf "%.0f", n / s }')"
  have=$target
  log "created $add files ($have in all) in ${create_s}s ($rate files/s)"
}

# Time one hybridctl call (seconds into $took).
timed() {
  local t0
  t0="$(now)"
  "$HYBRIDCTL" "$@" > "$root/out.json"
  took="$(elapsed "$t0" "$(now)")"
}

# Drop caches, then a cold find of the mounted volume; sets rss_dropped, walk_s, count,
# per_entry, rss_walked and the counters (0 where the mount has none: an older build).
cold_find() {
  local size=$1 t0
  drop_caches; sleep 5   # kernel forgets the inodes -> FUSE FORGETs
  rss_dropped="$(status_kib "$pid" VmRSS)"
  log "after drop_caches: RSS $(mib "$rss_dropped") MiB"
  t0="$(now)"
  count="$(find "$mp" -path "$mp/.snapshots" -prune -o -type f -print | wc -l)"
  walk_s="$(elapsed "$t0" "$(now)")"
  rss_walked="$(status_kib "$pid" VmRSS)"
  per_entry="$(awk -v s="$walk_s" -v n="$count" 'BEGIN { printf "%.1f", s * 1e6 / n }')"
  sleep 3   # the counters are written every 2 s
  refs="$(counter kernel_refs)" refs_kib="$(( $(counter kernel_refs_bytes) / 1024 ))"
  cache_kib="$(( $(counter meta_mem_block_cache_bytes) / 1024 ))"
  readers_kib="$(( $(counter meta_mem_table_readers_bytes) / 1024 ))"
  memt_kib="$(( $(counter meta_mem_memtables_bytes) / 1024 ))"
  log "find: $count files in ${walk_s}s ($per_entry us each); RSS $(mib "$rss_walked") MiB; kernel refs $refs ($refs_kib KiB); meta block cache $(mib "$cache_kib"), table readers $(mib "$readers_kib"), memtables $(mib "$memt_kib") MiB"
  [ "$count" = "$size" ] || log "WARNING: find counted $count files, expected $size"
  [ "$count" = "$size" ] || bad=1
  return 0
}

rows=() jrows=()
for size in "${sizes[@]}"; do
  if [ "$fill" = core ]; then
    grow "$size"
    mount_vol
  else
    mount_vol
    grow "$size"
  fi
  rss_created="$(status_kib "$pid" VmRSS)"
  snap_s="-" snap2_s="-" diff_s="-" diff_n="-"
  if [ "$snapshots" = 1 ]; then
    timed snapshot create "a$size" --volume million --json
    snap_s=$took
    # a change: 1000 files of the first directory rewritten
    for ((i = 0; i < 1000; i++)); do echo "$size" > "$mp/d00000/f$i"; done
    timed snapshot create "b$size" --volume million --json
    snap2_s=$took
    timed diff "a$size" "b$size" --volume million --json
    diff_s=$took
    diff_n="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(len(d.get("entries", d.get("changes", []))))' "$root/out.json" 2>/dev/null || echo "?")"
    log "snapshot create ${snap_s}s / ${snap2_s}s, diff ${diff_s}s ($diff_n entries)"
  fi
  cold_find "$size"
  umount_vol
  disk_kib="$(du -sk "$vol" | cut -f1)"
  target=$(( size > 1000000 ? 512 : 256 ))
  verdict=$([ "$peak" -lt $((target * 1024)) ] && echo ok || echo MISS)
  rows+=("| $size | $create_s / $rate | $snap_s / $snap2_s | $diff_s ($diff_n) | $walk_s / $count | $per_entry | $(mib "$rss_dropped") | $(mib "$rss_walked") | $refs / $refs_kib | $(mib "$cache_kib") / $(mib "$readers_kib") / $(mib "$memt_kib") | $umount_s | $(mib "$peak") (< $target: $verdict) | $(mib "$disk_kib") |")
  jrows+=("{\"files\": $size, \"create_s\": $create_s, \"create_files_per_s\": $rate, \"snapshot_create_s\": \"$snap_s\", \"snapshot_after_change_s\": \"$snap2_s\", \"diff_s\": \"$diff_s\", \"diff_entries\": \"$diff_n\", \"rss_after_create_kib\": ${rss_created:-null}, \"rss_after_drop_caches_kib\": ${rss_dropped:-null}, \"find_s\": $walk_s, \"find_count\": $count, \"find_us_per_entry\": $per_entry, \"rss_after_find_kib\": ${rss_walked:-null}, \"kernel_refs\": $refs, \"kernel_refs_kib\": $refs_kib, \"meta_block_cache_kib\": $cache_kib, \"meta_table_readers_kib\": $readers_kib, \"meta_memtables_kib\": $memt_kib, \"umount_s\": $umount_s, \"peak_rss_kib\": $peak, \"target_peak_rss_kib\": $((target * 1024)), \"ok\": $([ "$verdict" = ok ] && echo true || echo false), \"disk_kib\": $disk_kib}")
  if [ -n "$baseline" ]; then
    log "baseline: $baseline"
    bin="$baseline"
    mount_vol
    create_s="-" rate="-" snap_s="-" snap2_s="-" diff_s="-" diff_n="-"
    cold_find "$size"
    umount_vol
    bin="$HYBRIDCTL"
    verdict=$([ "$peak" -lt $((target * 1024)) ] && echo ok || echo MISS)
    rows+=("| $size baseline | - | - | - | $walk_s / $count | $per_entry | $(mib "$rss_dropped") | $(mib "$rss_walked") | - | - | $umount_s | $(mib "$peak") (< $target: $verdict) | |")
    jrows+=("{\"files\": $size, \"baseline\": \"$baseline\", \"rss_after_drop_caches_kib\": ${rss_dropped:-null}, \"find_s\": $walk_s, \"find_count\": $count, \"find_us_per_entry\": $per_entry, \"rss_after_find_kib\": ${rss_walked:-null}, \"umount_s\": $umount_s, \"peak_rss_kib\": $peak}")
  fi
done

cat <<EOF

hybridfs million-files  $(date -Iseconds)  files=$files fill=$fill jobs=$jobs per_dir=$per_dir
hybridctl: $HYBRIDCTL (built $bin_mtime)${baseline:+; baseline: $baseline (built $(date -Iseconds -r "$baseline"))}
| files | create (s) / files per s | snapshot create (s) / after a change | diff (s) (entries) | cold find (s) / counted | µs per entry | RSS after drop_caches (MiB) | RSS after find (MiB) | kernel refs / KiB | meta cache / table readers / memtables (MiB) | umount (s) | peak RSS (MiB) | volume on disk (MiB) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${rows[@]}"

if [ -n "$json" ]; then
  {
    echo "{\"date\": \"$(date -Iseconds)\", \"hybridctl\": \"$HYBRIDCTL\", \"hybridctl_mtime\": \"$bin_mtime\", \"fill\": \"$fill\", \"jobs\": $jobs, \"per_dir\": $per_dir, \"sizes\": ["
    (IFS=,; echo "${jrows[*]}")
    echo "]}"
  } > "$json"
  log "wrote $json"
fi
[ -z "${bad:-}" ]
