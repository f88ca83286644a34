#!/usr/bin/env python3
"""hybridfs clone benchmark (see benches/README.md, "Clone of small files").

For each volume size N (files of --size bytes, distinct content, in directories of 1,000),
against one SeaweedFS S3 server on 127.0.0.1 started here:

1. a home volume of N files is written through its mount and pushed (small files keep their
   bytes inline at home; the push publishes them as packed blocks);
2. `hybridctl clone` of it is timed, in a child process whose peak RSS (ru_maxrss) is read;
   what the clone left on disk is measured (`du` of its HYBRIDFS_HOME, and of its blocks and
   cache: no file data should be there);
3. next to it, a plain parallel download of the same layer objects (`rclone copy
   --transfers 8`): the least any clone must fetch;
4. the clone is mounted and a sample of files is read back and compared (lazily fetched).

Target (issue 9): a 1,000,000-file clone in under 30 s with the clone process under 256 MiB.
Standard library only; reuses push.py's SeaweedFS and volume helpers.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import push as P  # noqa: E402

log = B.log
PER_DIR = 1000

# Runs argv, then prints the peak RSS (KiB) and the user and system CPU seconds of it: the
# only child of this small process.
PEAK_RSS = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stderr.write(r.stderr)\n"
            "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(r.returncode, u.ru_maxrss, u.ru_utime, u.ru_stime)\n"
            "print(r.stdout)\n")


def content(i, size):
    return (f"{i}:".encode() * (size // 2 + 8))[:size]


def path_of(root, i):
    return os.path.join(root, f"d{i // PER_DIR:04}", f"f{i:07}")


def populate(root, n, size):
    for d in range((n + PER_DIR - 1) // PER_DIR):
        os.makedirs(os.path.join(root, f"d{d:04}"), exist_ok=True)
    for i in range(n):
        with open(path_of(root, i), "wb") as f:
            f.write(content(i, size))


def du(path):
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


class CloneBench(P.StoreBench):
    def __init__(self, a):
        super().__init__(a, "hybridfs-clone-bench-")

    def one(self, n):
        a = self.a
        home = P.Vol(self.root, self.bin, f"home{n}", self.aws_env(), store=f"s3://bench/c{n}",
                     block_size="1M")
        # --reuse: the home pushed by an earlier run into the kept SeaweedFS is cloned again.
        pushed = os.path.join(self.root, f"pushed{n}.json")
        if a.reuse and os.path.exists(pushed):
            with open(pushed) as f:
                populate_s, push = json.load(f)
            log(f"N={n}: reusing the home pushed earlier ({push.get('records')} records)")
        else:
            shutil.rmtree(home.home, ignore_errors=True)
            self.vols.append(home)
            home.setup()
            log(f"N={n}: writing {n} files of {a.size} B through the mount")
            t0 = time.perf_counter()
            populate(home.mp, n, a.size)
            populate_s = time.perf_counter() - t0
            home.remount()
            push = home.push(timeout=a.timeout)
            log(f"N={n}: home pushed {push.get('records')} records, {push.get('packs')} packs "
                f"in {push['wall_s']:.1f}s")
            home.hc("umount", home.mp, timeout=a.timeout)
            home.mounted = False
            if a.reuse:
                with open(pushed, "w") as f:
                    json.dump([populate_s, push], f)

        # The reference: the layer objects, downloaded by a plain parallel S3 client.
        layers = f"s3:bench/c{n}/home{n}/branches/main/layers"
        ref_dir = os.path.join(self.root, f"layers{n}")
        os.sync()
        B.drop_caches()
        t0 = time.perf_counter()
        r = self.rclone("copy", "--transfers", "8", layers, ref_dir, timeout=a.timeout)
        rclone_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"rclone copy failed: {r.stderr[-1500:]}")
        layer_bytes = du(ref_dir)
        shutil.rmtree(ref_dir)

        clone = P.Vol(self.root, self.bin, f"clone{n}", self.aws_env())
        self.vols.append(clone)
        shutil.rmtree(clone.home, ignore_errors=True)   # left by an interrupted --reuse run
        shutil.rmtree(clone.mp, ignore_errors=True)
        os.mkdir(clone.home)
        os.mkdir(clone.mp)
        os.sync()
        B.drop_caches()
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", PEAK_RSS, *shlex.split(a.wrap), self.bin, "clone",
                            f"s3://bench/c{n}/home{n}", "--branch", "burst", "--name",
                            f"clone{n}", "--json"], env=clone.env, capture_output=True,
                           text=True, timeout=a.timeout)
        clone_s = time.perf_counter() - t0
        first = p.stdout.splitlines()[0].split()
        code, peak_kib, user_s, sys_s = int(first[0]), int(first[1]), float(first[2]), float(first[3])
        if code != 0:
            raise RuntimeError(f"clone failed ({code}): {p.stderr[-1500:]}")
        rep = json.loads("\n".join(p.stdout.splitlines()[1:]))
        vol_dir = os.path.join(clone.home, "volumes", f"clone{n}")
        home_bytes = du(clone.home)
        data_bytes = du(os.path.join(vol_dir, "blocks")) + du(os.path.join(clone.home, "cache"))

        clone.mount()
        step = max(1, n // a.sample)
        sample = list(range(0, n, step))
        t0 = time.perf_counter()
        bad = [i for i in sample if open(path_of(clone.mp, i), "rb").read() != content(i, a.size)]
        read_s = time.perf_counter() - t0
        clone.hc("umount", clone.mp, timeout=a.timeout)
        clone.mounted = False
        if bad:
            raise RuntimeError(f"N={n}: clone reads wrong bytes at files {bad[:10]}")
        row = {"files": n, "file_bytes": n * a.size, "populate_s": populate_s,
               "push_s": push["wall_s"], "push_packs": push.get("packs"),
               "clone_s": clone_s, "clone_peak_rss_kib": peak_kib,
               "clone_user_s": user_s, "clone_sys_s": sys_s, "load_avg": os.getloadavg()[0],
               "clone_records": rep.get("records"), "clone_layers": rep.get("layers"),
               "clone_walk_s": rep.get("walk_seconds"), "clone_apply_s": rep.get("apply_seconds"),
               "clone_persist_s": rep.get("persist_seconds"),
               "clone_home_bytes": home_bytes, "clone_data_bytes": data_bytes,
               "layer_bytes": layer_bytes, "rclone_layers_s": rclone_s,
               "sample_files_read": len(sample), "sample_read_s": read_s}
        log(f"N={n}: {json.dumps(row)}")
        self.rows.append(row)
        for v in (home, clone):
            v.cleanup()
            shutil.rmtree(v.home, ignore_errors=True)   # disk: the next size starts clean

    def report(self):
        print("\n| files | file bytes | layers (MB) | clone (s) | user + sys CPU (s) "
              "| rclone copy of the layers (s) "
              "| clone / rclone | clone peak RSS (MiB) | clone's HOME (MB) | file data at clone (B) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in self.rows:
            print(f"| {r['files']:,} | {r['file_bytes'] / 1e6:,.0f} MB | {r['layer_bytes'] / 1e6:.1f} "
                  f"| {r['clone_s']:.2f} | {r['clone_user_s']:.1f} + {r['clone_sys_s']:.1f} "
                  f"| {r['rclone_layers_s']:.2f} "
                  f"| {r['clone_s'] / r['rclone_layers_s']:.2f}x "
                  f"| {r['clone_peak_rss_kib'] / 1024:.0f} | {r['clone_home_bytes'] / 1e6:.1f} "
                  f"| {r['clone_data_bytes']:,} |")
        if len(self.rows) > 1:
            f, l = self.rows[0], self.rows[-1]
            print(f"\nvolume x{l['files'] / f['files']:.0f}: clone time x{l['clone_s'] / f['clone_s']:.2f}, "
                  f"peak RSS x{l['clone_peak_rss_kib'] / f['clone_peak_rss_kib']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hybridctl", default=os.environ.get("HYBRIDCTL", os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")))
    ap.add_argument("--sizes", default="100000,1000000", help="volume sizes in files")
    ap.add_argument("--size", type=int, default=1000, help="bytes per file (<= 4096: inline)")
    ap.add_argument("--sample", type=int, default=2000, help="files read back after the clone")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--scratch", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--wrap", default="", help="a command the clone runs under (e.g. "
                    "'perf record -g -o FILE'): its time and memory are counted too")
    ap.add_argument("--reuse", metavar="DIR", help="keep SeaweedFS and the pushed homes in DIR "
                    "and clone them again in later runs with --reuse DIR (build once, then "
                    "compare binaries); the clones are removed, DIR is kept")
    a = ap.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    bench = CloneBench(a)
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
