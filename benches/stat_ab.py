#!/usr/bin/env python3
"""Cold stat, interleaved A/B: hybridctl builds side by side with the bare fuser pass-through.

    benches/stat_ab.py --hybridctl new=PATH --hybridctl old=PATH [--fuse-ref PATH]
                       [--env new:VAR=VALUE] [--files 10000] [--rounds 6] [--scratch DIR]

`--env NAME:VAR=VALUE` sets a variable for target NAME's hybridctl and mount (one build, two
settings: `--hybridctl a=BIN --hybridctl b=BIN --env b:HYBRIDFS_META_INDEX=partitioned`).

Each target gets a fresh mount (hybridfs: a formatted volume; fuseref: a directory) holding
the same N files of 1 KiB, made by `create` as in run.sh. Then, per round, every target in
turn (the order rotates each round): drop caches, `stat` each file by name (run.sh's
`stat` worker), microseconds per stat. The same loop holds all of them, so the machine's load
falls on each alike.

A drop of the caches makes the kernel send a FORGET for every inode it evicts, to every
mount, and the mounts answer them while the next `stat` loop runs. So that each target's
timed loop carries its own FORGETs (as in run.sh, where one target's runs follow each other)
and no other's, each timed loop comes after: a drop, `--settle` seconds for every mount to
answer its FORGETs, an untimed `stat` of the target's files (the kernel holds only them
now), and the drop before the timed loop (`--settle 0`: timed loops only, a target's FORGETs
falling on the next target's loop).

Beside the time, the CPU the mount process spent (user + system, all its threads, from
/proc/PID/stat) from the drop before the timed loop to its end, per stat: its lookups and
FORGETs, a figure the machine's load sways far less than the time; and what it read from the
disk meanwhile (/proc/PID/io `read_bytes`), KiB per stat.

`--fresh`: run.sh's sequence instead, per round and target: create N new files in a new
directory, `sync`, drop, the timed `stat`, unlink them (the FORGETs are the target's own: the
kernel held only the files it had just created). Prints the rounds, the medians, each median's ratio against fuseref's
(speed: ref time / target time, target >= 0.77) and the load average; needs root to drop
caches (without it the figures are warm, and say so).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_bytes(pid):
    """Bytes process `pid` has had read from storage so far."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def timed(t, stat, files):
    """Drop the caches, `stat` the files: (us per stat, mount CPU us per stat, KiB read per stat)."""
    cpu0, io0 = cpu_seconds(t.pid), read_bytes(t.pid)
    bench.drop_caches()
    res = bench.w_stat(stat)
    assert res["mismatches"] == 0, f"{t.name}: {res['mismatches']} files of the wrong size"
    cpu = (cpu_seconds(t.pid) - cpu0) / files * 1e6
    kib = (read_bytes(t.pid) - io0) / files / 1024
    return res["seconds"] / files * 1e6, cpu, kib


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybridctl", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--fuse-ref", default=os.environ.get("FUSE_REF"))
    ap.add_argument("--env", action="append", default=[], metavar="NAME:VAR=VALUE")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--settle", type=float, default=2.0, metavar="SECONDS")
    ap.add_argument("--fresh", action="store_true", help="run.sh's create, sync, drop, stat, unlink per round")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="stat-ab-", dir=a.scratch)
    targets = []
    for spec in a.hybridctl:
        name, path = spec.split("=", 1)
        targets.append(bench.Hybridfs(root, path, name=name))
    for spec in a.env:
        name, setting = spec.split(":", 1)
        var, value = setting.split("=", 1)
        next(t for t in targets if t.name == name).env[var] = value
    if a.fuse_ref:
        targets.append(bench.FuseRef(root, a.fuse_ref))
    times = {t.name: [] for t in targets}
    cpus = {t.name: [] for t in targets}
    reads = {t.name: [] for t in targets}
    try:
        for t in targets:
            t.setup()
            if not a.fresh:
                bench.w_create({"dir": os.path.join(t.dir, "small"), "count": a.files, "nonce": 1})
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            line = []
            for t in order:
                stat = {"dir": os.path.join(t.dir, f"small{r}" if a.fresh else "small"), "count": a.files}
                if a.fresh:
                    bench.w_create({"dir": stat["dir"], "count": a.files, "nonce": r})
                    subprocess.run(["sync"], check=True)
                elif a.settle > 0:
                    bench.drop_caches()
                    time.sleep(a.settle)
                    bench.w_stat(stat)
                us, cpu, kib = timed(t, stat, a.files)
                if a.fresh:
                    bench.w_unlink(stat)
                times[t.name].append(us)
                cpus[t.name].append(cpu)
                reads[t.name].append(kib)
                line.append(f"{t.name} {us:.1f} (cpu {cpu:.1f}, read {kib:.2f} KiB)")
            print(f"round {r}: " + ", ".join(line) + f" (us per stat; load {os.getloadavg()[0]:.2f})", flush=True)
        ref = statistics.median(times["fuseref"]) if "fuseref" in times else None
        for t in targets:
            med = statistics.median(times[t.name])
            ratio = f", {ref / med:.2f}x fuseref's speed" if ref else ""
            rss = t.rss().get("VmRSS")
            cpu, kib = statistics.median(cpus[t.name]), statistics.median(reads[t.name])
            print(f"{t.name}: median {med:.1f} us per stat (rounds {min(times[t.name]):.1f}-{max(times[t.name]):.1f}){ratio}; "
                  f"mount CPU median {cpu:.1f} us, disk read {kib:.2f} KiB per stat; RSS {rss} KiB")
        print(f"load average at the end: {os.getloadavg()}; caches dropped: {bench.DROP_OK}")
    finally:
        for t in targets:
            try:
                t.teardown(120)
            except Exception as e:  # noqa: BLE001 - report and go on unmounting the rest
                print(f"unmount {t.name}: {e}", file=sys.stderr)
                t.cleanup()
        if not any(bench.is_mounted(t.mp) for t in targets):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
