#!/usr/bin/env python3
"""hybridfs merge benchmark (see benches/README.md, "Merge").

For each volume size N (files of 200 B in directories of 1,000), against one SeaweedFS S3
server on 127.0.0.1 started here:

1. a home volume of N files is written through its mount and pushed; a burst clone of it
   (branch `burst`) rewrites --changes files and pushes; home rewrites --home-changes other
   files (not pushed);
2. home is unmounted and `hybridctl merge burst --dry-run --json` (planning) and then
   `hybridctl merge burst --json` (plan + apply) are timed;
3. next to it, the same two trees as plain local directories and the time of
   `rsync -a --delete BURST/ HOME/`, which is what reconciling them without a journal costs
   (it scans both trees; it is one-way, so it would also lose home's changes: a lower bound
   for any tree-comparing tool);
4. the merged tree is checked: every file the branch changed has the branch's bytes, every
   file home changed has home's, a sample of untouched files is unchanged.

Merge time should follow the change (flat in N); rsync's grows with N.  Standard library
only; reuses push.py's SeaweedFS and volume helpers and bench.py's cleanup helpers.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import push as P  # noqa: E402

log = B.log
PER_DIR = 1000


def content(i, tag):
    return (f"{tag}:{i}:".encode() * 40)[:200]


def populate(root, n, tag="base"):
    for d in range((n + PER_DIR - 1) // PER_DIR):
        os.makedirs(os.path.join(root, f"d{d:04}"), exist_ok=True)
    for i in range(n):
        with open(path_of(root, i), "wb") as f:
            f.write(content(i, tag))


def path_of(root, i):
    return os.path.join(root, f"d{i // PER_DIR:04}", f"f{i:07}")


def rewrite(root, ids, tag):
    for i in ids:
        with open(path_of(root, i), "wb") as f:
            f.write(content(i, tag))


class MergeBench(P.StoreBench):
    def __init__(self, a):
        super().__init__(a, "hybridfs-merge-bench-")

    def one(self, n):
        a = self.a
        changes, home_changes = min(a.changes, n // 2), min(a.home_changes, n // 10)
        home = P.Vol(self.root, self.bin, f"home{n}", self.aws_env(), store=f"s3://bench/m{n}",
                     block_size="1M")
        self.vols.append(home)
        home.setup()
        log(f"N={n}: writing {n} files through the mount")
        t0 = time.perf_counter()
        populate(home.mp, n)
        populate_s = time.perf_counter() - t0
        home.remount()
        push = home.push(timeout=a.timeout)
        log(f"N={n}: home pushed {push.get('records')} records in {push['wall_s']:.1f}s")

        burst = P.Vol(self.root, self.bin, f"burst{n}", self.aws_env())
        self.vols.append(burst)
        os.mkdir(burst.home)
        os.mkdir(burst.mp)
        burst.hc("clone", f"s3://bench/m{n}/home{n}", "--branch", "burst", "--name",
                 f"burst{n}", timeout=a.timeout)
        burst.mount()
        branch_ids = range(0, changes)
        home_ids = range(n - home_changes, n)
        rewrite(burst.mp, branch_ids, "burst")
        burst.remount()
        bpush = burst.push(timeout=a.timeout)
        burst.hc("umount", burst.mp, timeout=a.timeout)
        burst.mounted = False
        rewrite(home.mp, home_ids, "home")
        home.hc("umount", home.mp, timeout=a.timeout)
        home.mounted = False

        t0 = time.perf_counter()
        dry = home.hc("merge", "burst", "--volume", home.volume, "--dry-run", "--json",
                      timeout=a.timeout, check=False)
        plan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = home.hc("merge", "burst", "--volume", home.volume, "--json",
                       timeout=a.timeout, check=False)
        merge_s = time.perf_counter() - t0
        if done.returncode not in (0, 3):
            raise RuntimeError(f"merge failed ({done.returncode}): {done.stderr[-1500:]}")
        rec = json.loads(done.stdout)

        local_home = os.path.join(self.root, f"local-home{n}")
        local_burst = os.path.join(self.root, f"local-burst{n}")
        populate(local_home, n)
        shutil.copytree(local_home, local_burst)
        rewrite(local_burst, branch_ids, "burst")
        rewrite(local_home, home_ids, "home")
        os.sync()
        B.drop_caches()
        t0 = time.perf_counter()
        subprocess.run(["rsync", "-a", "--delete", local_burst + "/", local_home + "/"],
                       check=True, timeout=a.timeout)
        rsync_s = time.perf_counter() - t0
        shutil.rmtree(local_home)
        shutil.rmtree(local_burst)

        home.mount()
        bad = [i for i in list(branch_ids)[:: max(1, changes // 500)]
               if open(path_of(home.mp, i), "rb").read() != content(i, "burst")]
        bad += [i for i in home_ids if open(path_of(home.mp, i), "rb").read() != content(i, "home")]
        bad += [i for i in range(changes, n - home_changes, max(1, n // 500))
                if open(path_of(home.mp, i), "rb").read() != content(i, "base")]
        home.hc("umount", home.mp, timeout=a.timeout)
        home.mounted = False
        if bad:
            raise RuntimeError(f"N={n}: merged tree wrong at files {bad[:10]}")
        row = {"files": n, "branch_changes": changes, "home_changes": home_changes,
               "populate_s": populate_s, "home_push_s": push["wall_s"],
               "branch_push_s": bpush["wall_s"], "dry_run_s": plan_s,
               "dry_run_exit": dry.returncode, "merge_s": merge_s, "merge_exit": done.returncode,
               "merge_record": {k: rec.get(k) for k in ("applied", "conflicts", "seconds")
                                if k in rec},
               "rsync_s": rsync_s}
        log(f"N={n}: {json.dumps(row)}")
        self.rows.append(row)

    def report(self):
        print("\n| files | branch changes | home changes | merge --dry-run (s) | merge (s) "
              "| rsync -a --delete (s) | rsync / merge |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in self.rows:
            print(f"| {r['files']:,} | {r['branch_changes']:,} | {r['home_changes']:,} "
                  f"| {r['dry_run_s']:.2f} | {r['merge_s']:.2f} | {r['rsync_s']:.2f} "
                  f"| {r['rsync_s'] / r['merge_s']:.2f}x |")
        if len(self.rows) > 1:
            f, l = self.rows[0], self.rows[-1]
            print(f"\nvolume x{l['files'] / f['files']:.0f}: merge x{l['merge_s'] / f['merge_s']:.2f}, "
                  f"dry run x{l['dry_run_s'] / f['dry_run_s']:.2f}, rsync x{l['rsync_s'] / f['rsync_s']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hybridctl", default=os.environ.get("HYBRIDCTL", os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")))
    ap.add_argument("--sizes", default="20000,200000", help="volume sizes in files")
    ap.add_argument("--changes", type=int, default=10000, help="files the branch rewrites")
    ap.add_argument("--home-changes", type=int, default=1000, help="files home rewrites")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--scratch", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    bench = MergeBench(a)
    try:
        bench.start()
        for n in [int(x) for x in a.sizes.split(",")]:
            bench.one(n)
    finally:
        bench.cleanup()
    bench.report()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(bench.rows, f, indent=2)


if __name__ == "__main__":
    main()
