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
FORGETs, a figure the machine's load sways far less than the time. Prints the rounds, the medians, each median's ratio against fuseref's
(speed: ref time / target time, target >= 0.77) and the load average; needs root to drop
caches (without it the figures are warm, and say so).
"""
import argparse
import os
import shutil
import statistics
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybridctl", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--fuse-ref", default=os.environ.get("FUSE_REF"))
    ap.add_argument("--env", action="append", default=[], metavar="NAME:VAR=VALUE")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--settle", type=float, default=2.0, metavar="SECONDS")
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
    try:
        for t in targets:
            t.setup()
            small = os.path.join(t.dir, "small")
            bench.w_create({"dir": small, "count": a.files, "nonce": 1})
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            line = []
            for t in order:
                stat = {"dir": os.path.join(t.dir, "small"), "count": a.files}
                if a.settle > 0:
                    bench.drop_caches()
                    time.sleep(a.settle)
                    bench.w_stat(stat)
                cpu0 = cpu_seconds(t.pid)
                bench.drop_caches()
                res = bench.w_stat(stat)
                cpu = (cpu_seconds(t.pid) - cpu0) / a.files * 1e6
                assert res["mismatches"] == 0, f"{t.name}: {res['mismatches']} files of the wrong size"
                us = res["seconds"] / res["count"] * 1e6
                times[t.name].append(us)
                cpus[t.name].append(cpu)
                line.append(f"{t.name} {us:.1f} (cpu {cpu:.1f})")
            print(f"round {r}: " + ", ".join(line) + f" (us per stat; load {os.getloadavg()[0]:.2f})", flush=True)
        ref = statistics.median(times["fuseref"]) if "fuseref" in times else None
        for t in targets:
            med = statistics.median(times[t.name])
            ratio = f", {ref / med:.2f}x fuseref's speed" if ref else ""
            rss = t.rss().get("VmRSS")
            cpu = statistics.median(cpus[t.name])
            print(f"{t.name}: median {med:.1f} us per stat (rounds {min(times[t.name]):.1f}-{max(times[t.name]):.1f}){ratio}; "
                  f"mount CPU median {cpu:.1f} us per stat; RSS {rss} KiB")
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
