#!/usr/bin/env python3
"""hybridfs first-read-on-a-clone benchmark (see benches/README.md, "First reads on a clone").

Issue 16's clone target: reading a large file and a directory of many small files right
after `hybridctl clone` + `mount` should run at >= 0.8x the speed of a plain parallel
download of the same objects from the same server (`rclone copy --transfers 16`).

In one run, against one SeaweedFS S3 server on 127.0.0.1 (started here):

1. a home volume holds one large file (--big-mib, random bytes, 1 MiB blocks) and a directory
   of --files small files (random sizes in [--small-min, --small-max], random bytes); it is
   pushed;
2. the reference: `rclone copy --transfers 16` of the large file's block objects
   (`VOLUME/blocks/`), and of the small files' packs (`VOLUME/packs/`), page cache dropped
   before each;
3. for each read below, a fresh clone in its own HYBRIDFS_HOME (so no block is cached on the
   node), `clone` and `mount` timed, the page cache dropped, then:
   * big: `cat` of the large file;
   * tar: `tar cf - DIR | wc -c` of the small files (ONE reader, in directory order: a
     serial reader against rclone's 16 parallel transfers measures parallelism as much as
     the file system);
   * par: 16 threads reading every small file (each takes the next file of the sorted list):
     the like-for-like figure against rclone's 16 transfers;
   * loader: a data loader's pass: the small files in a shuffled order, --loader-threads
     threads, files/s;
   the small-file reads are also timed on the home volume (all blocks local, page cache
   dropped): what reading the files through the mount costs with nothing to fetch; and on a
   plain local directory holding the same files (`local`, page cache dropped): what reading
   10,000 files costs with no FUSE at all (rclone downloads 21 packs, not 10,000 files);
   the GET requests each read made (SeaweedFS's metrics) are counted, and the mount's own
   counters (`--metrics-addr`): FUSE requests per file by kind, the seconds they spent in the
   mount process, and the mount process's CPU seconds, per file;
4. what was read is checked against the home's SHA-256 of each file.

Speed ratios are rclone's time / hybridfs's time (>= 0.8 is the target), with and without the
clone + mount time. Standard library only; reuses push.py's SeaweedFS and volume helpers.
"""

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import push as P  # noqa: E402

log = B.log
MiB = 1 << 20
READS = ("big", "tar", "par", "loader")
LABELS = ("big: `cat` of the 1 GiB file (one reader; the kernel's and the mount's read-ahead "
          "fetch in parallel); tar: `tar cf -` of the 10,000 files, ONE serial reader; par: 16 "
          "threads, like rclone's --transfers 16; loader: shuffled list, --loader-threads threads. "
          "local dir: the same files in a plain local directory, read the same way.")


def write_random(path, size):
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            buf = os.urandom(min(left, MiB))
            f.write(buf)
            h.update(buf)
            left -= len(buf)
    return h.hexdigest()


def read_all(path):
    with open(path, "rb", buffering=0) as f:
        h = hashlib.sha256()
        while True:
            b = f.read(MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def read_many(paths, threads):
    """Read every file of `paths` on `threads` threads (each takes the next file in order);
    returns {path: sha256}."""
    with cf.ThreadPoolExecutor(threads) as ex:
        return dict(zip(paths, ex.map(read_all, paths)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    """The mount's Prometheus page as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " " in line:
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def cpu_seconds(pid):
    """utime + stime of process `pid` (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mount_cost(before, after, cpu0, cpu1, files):
    """Per file: FUSE requests by kind, their seconds in the mount, its CPU seconds."""
    ops = {}
    for k, v in after.items():
        m = re.fullmatch(r'hybridfs_fuse_requests_total\{op="(\w+)"\}', k)
        if m:
            n = v - before.get(k, 0.0)
            if n > 0:
                op = m.group(1)
                sk = f'hybridfs_fuse_request_seconds_sum{{op="{op}"}}'
                ops[op] = {"n": n, "s": after.get(sk, 0.0) - before.get(sk, 0.0)}
    files = max(files, 1)
    return {"ops": ops, "requests_per_file": sum(o["n"] for o in ops.values()) / files,
            "in_mount_us_per_file": sum(o["s"] for o in ops.values()) / files * 1e6,
            "cpu_us_per_file": (cpu1 - cpu0) / files * 1e6}


def cost_line(c):
    ops = ", ".join(f"{op} {o['n']:,.0f} ({o['s'] / o['n'] * 1e6:.0f} us)"
                    for op, o in sorted(c["ops"].items(), key=lambda x: -x[1]["n"]))
    return (f"{c['requests_per_file']:.1f} requests/file, {c['in_mount_us_per_file']:.0f} us/file "
            f"in the mount, {c['cpu_us_per_file']:.0f} us/file of mount CPU: {ops}")


def du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


class CloneReadBench(P.StoreBench):
    def __init__(self, a):
        super().__init__(a, "hybridfs-clone-read-")
        self.res = {"args": vars(a), "git": B.git_head()}

    def store_url(self):
        return "s3://bench/cr"

    def make_home(self):
        """Write and push the home volume (or reuse the one an earlier --reuse run pushed)."""
        a = self.a
        self.home = P.Vol(self.root, self.bin, "home", self.aws_env(), store=self.store_url(),
                          block_size="1M")
        self.vols.append(self.home)
        saved = os.path.join(self.root, "home.json")
        if a.reuse and os.path.exists(saved):
            with open(saved) as f:
                self.res["home"] = json.load(f)
            log("reusing the home pushed by an earlier run")
            return
        shutil.rmtree(self.home.home, ignore_errors=True)
        shutil.rmtree(self.home.mp, ignore_errors=True)
        self.home.setup()
        rng = random.Random(16)
        os.makedirs(os.path.join(self.home.mp, "big"))
        os.makedirs(os.path.join(self.home.mp, "small"))
        log(f"writing a {a.big_mib} MiB file and {a.files} small files through the mount")
        want = {"big/one.bin": write_random(os.path.join(self.home.mp, "big/one.bin"),
                                            a.big_mib * MiB)}
        small_bytes = 0
        for i in range(a.files):
            size = rng.randint(a.small_min, a.small_max)
            rel = f"small/f{i:06d}"
            want[rel] = write_random(os.path.join(self.home.mp, rel), size)
            small_bytes += size
        self.home.remount()
        push = self.home.push(timeout=a.timeout)
        log(f"home pushed: {push.get('bytes_uploaded', 0) / MiB:.0f} MiB, {push.get('packs')} "
            f"packs, {push['wall_s']:.1f}s")
        self.home.hc("umount", self.home.mp, timeout=a.timeout)
        self.home.mounted = False
        self.res["home"] = {"want": want, "small_bytes": small_bytes, "push": push}
        if a.reuse:
            with open(saved, "w") as f:
                json.dump(self.res["home"], f)

    def rclone_ref(self, kind):
        """rclone copy --transfers 16 of VOLUME/KIND (blocks or packs): seconds, bytes."""
        dest = os.path.join(self.root, f"rclone-{kind}")
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()
        B.drop_caches()
        before = self.weed.metrics()
        t0 = time.perf_counter()
        r = self.rclone("copy", "--transfers", "16", f"s3:bench/cr/home/{kind}", dest,
                        timeout=self.a.timeout)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"rclone copy of {kind} failed: {r.stderr[-1500:]}")
        row = {"s": dt, "bytes": du(dest), "objects": sum(len(f) for _, _, f in os.walk(dest)),
               "store": P.mdelta(before, self.weed.metrics(), "bench")}
        shutil.rmtree(dest)
        log(f"rclone {kind}: {row['objects']} objects, {row['bytes'] / MiB:.0f} MiB in {dt:.2f}s")
        return row

    def with_metrics(self, v):
        """Mount `v` with its metrics served on a free port (`v.metrics_port`)."""
        v.metrics_port = free_port()
        v.env["HYBRIDFS_MOUNT_METRICS_ADDR"] = f"127.0.0.1:{v.metrics_port}"
        return v

    def timed_read(self, what, v):
        """read() of `what` on mounted volume `v`, with the mount's cost per file."""
        before, cpu0 = scrape(v.metrics_port), cpu_seconds(v.pid)
        after = []
        dt, got = self.read(what, v.mp, lambda: after.append((scrape(v.metrics_port),
                                                              cpu_seconds(v.pid))))
        cost = mount_cost(before, after[0][0], cpu0, after[0][1], len(got))
        return dt, got, cost

    def fresh_clone(self, what):
        c = self.with_metrics(P.Vol(self.root, self.bin, f"clone-{what}", self.aws_env()))
        self.vols.append(c)
        shutil.rmtree(c.home, ignore_errors=True)
        shutil.rmtree(c.mp, ignore_errors=True)
        os.mkdir(c.home)
        os.mkdir(c.mp)
        t0 = time.perf_counter()
        c.hc("clone", f"{self.store_url()}/home", "--branch", f"b-{what}", "--name", c.volume,
             "--json", timeout=self.a.timeout)
        clone_s = time.perf_counter() - t0
        mount_s = c.mount()
        return c, clone_s, mount_s

    def small_paths(self, root):
        return [os.path.join(root, rel) for rel in sorted(self.res["home"]["want"])
                if rel.startswith("small/")]

    def loader_order(self, root):
        paths = self.small_paths(root)
        random.Random(7).shuffle(paths)
        return paths

    def read(self, what, root, timed=lambda: None):
        """Run read `what` under `root`: (seconds, {relpath: sha256} of what was read).
        `timed` is called as soon as the timed part ends (before tar's and cat's files are
        read again for their checksums)."""
        a = self.a
        os.sync()
        B.drop_caches()
        rel = lambda got: {os.path.relpath(p, root): h for p, h in got.items()}
        t0 = time.perf_counter()
        if what == "big":
            r = subprocess.run(["cat", os.path.join(root, "big/one.bin")],
                               stdout=subprocess.DEVNULL, timeout=a.timeout)
            dt = time.perf_counter() - t0
            timed()
            if r.returncode != 0:
                raise RuntimeError("cat of the large file failed")
            return dt, {"big/one.bin": read_all(os.path.join(root, "big/one.bin"))}
        if what == "tar":
            r = subprocess.run(f"tar cf - -C {root} small | wc -c", shell=True,
                               capture_output=True, text=True, timeout=a.timeout)
            dt = time.perf_counter() - t0
            timed()
            if r.returncode != 0:
                raise RuntimeError(f"tar failed: {r.stderr[-500:]}")
            return dt, rel(read_many(self.small_paths(root), 16))
        got = read_many(self.small_paths(root) if what == "par" else self.loader_order(root),
                        16 if what == "par" else a.loader_threads)
        dt = time.perf_counter() - t0
        timed()
        return dt, rel(got)

    def one(self, what):
        c, clone_s, mount_s = self.fresh_clone(what)
        before = self.weed.metrics()
        dt, got, cost = self.timed_read(what, c)
        store = P.mdelta(before, self.weed.metrics(), "bench")
        want = self.res["home"]["want"]
        bad = [k for k, h in got.items() if want.get(k) != h]
        if bad:
            raise RuntimeError(f"{what}: the clone read wrong bytes in {bad[:5]}")
        row = {"clone_s": clone_s, "mount_s": mount_s, "read_s": dt, "files": len(got),
               "store": store, "load_avg": os.getloadavg()[0],
               "cache_bytes": du(os.path.join(c.home, "cache")), "mount_cost": cost}
        log(f"{what}: clone {clone_s:.2f}s + mount {mount_s:.2f}s, read {dt:.2f}s, "
            f"{store.get('GET', 0)} GETs; {cost_line(cost)}")
        c.hc("umount", c.mp, timeout=self.a.timeout)
        c.mounted = False
        shutil.rmtree(c.home, ignore_errors=True)
        return row

    def home_reads(self):
        """The small-file reads on the home volume (all its blocks local, page cache dropped):
        what reading 10,000 files through the mount costs with nothing to fetch."""
        h = self.with_metrics(self.home)
        h.mount()
        out = {}
        local = os.path.join(self.root, "local")
        if not os.path.isdir(os.path.join(local, "small")):
            shutil.rmtree(local, ignore_errors=True)
            os.mkdir(local)
            shutil.copytree(os.path.join(h.mp, "small"), os.path.join(local, "small"))
        for what in [w for w in self.a.reads if w != "big"]:
            dt, got, cost = self.timed_read(what, h)
            out[what] = {"read_s": dt, "files": len(got), "mount_cost": cost}
            log(f"home {what}: read {dt:.2f}s; {cost_line(cost)}")
        h.hc("umount", h.mp, timeout=self.a.timeout)
        h.mounted = False
        want = self.res["home"]["want"]
        for what in [w for w in self.a.reads if w != "big"]:
            dt, got = self.read(what, local)
            bad = [k for k, x in got.items() if want.get(k) != x]
            if bad:
                raise RuntimeError(f"local {what}: wrong bytes in {bad[:5]}")
            out[what]["local_s"] = dt
            log(f"local {what}: read {dt:.2f}s")
        return out

    def run(self):
        a = self.a
        self.make_home()
        self.res["rclone"] = {k: self.rclone_ref(k) for k in ("blocks", "packs")}
        self.res["reads"] = {w: self.one(w) for w in a.reads}
        self.res["home_reads"] = self.home_reads()

    def report(self):
        r = self.res
        if "reads" not in r:
            return
        home = r["home"]
        big = next(iter(k for k in home["want"] if k.startswith("big/")))
        nfiles = sum(1 for k in home["want"] if k.startswith("small/"))
        print(f"\nhybridfs clone_read at {r['git']}: {self.a.big_mib} MiB file, {nfiles:,} small "
              f"files ({home['small_bytes'] / MiB:.0f} MiB); rclone copy --transfers 16 of "
              f"blocks {r['rclone']['blocks']['s']:.2f}s ({r['rclone']['blocks']['objects']} "
              f"objects), packs {r['rclone']['packs']['s']:.2f}s "
              f"({r['rclone']['packs']['objects']} objects)")
        print("\n| read | clone + mount (s) | read (s) | MB/s | files/s | GETs "
              "| rclone (s) | speed vs rclone | incl. clone + mount | home read (s) | vs home "
              "| local dir (s) | local vs rclone |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w, x in r["reads"].items():
            ref = r["rclone"]["blocks" if w == "big" else "packs"]
            nbytes = self.a.big_mib * MiB if w == "big" else home["small_bytes"]
            cm = x["clone_s"] + x["mount_s"]
            print(f"| {w} | {x['clone_s']:.2f} + {x['mount_s']:.2f} | {x['read_s']:.2f} "
                  f"| {nbytes / 1e6 / x['read_s']:.0f} | {x['files'] / x['read_s']:,.0f} "
                  f"| {x['store'].get('GET', 0):,} | {ref['s']:.2f} "
                  f"| {ref['s'] / x['read_s']:.2f}x | {ref['s'] / (x['read_s'] + cm):.2f}x "
                  + (f"| {hr['read_s']:.2f} | {hr['read_s'] / x['read_s']:.2f}x "
                     f"| {hr['local_s']:.2f} | {ref['s'] / hr['local_s']:.2f}x |"
                     if (hr := r.get("home_reads", {}).get(w)) and "local_s" in hr
                     else "| - | - | - | - |"))
        print(f"\n{LABELS}")
        print("\nThe mount's cost per file (its counters over the read):")
        for w, x in r["reads"].items():
            if "mount_cost" in x and w != "big":
                print(f"- clone {w}: {cost_line(x['mount_cost'])}")
            if (hr := r.get("home_reads", {}).get(w)) and "mount_cost" in hr:
                print(f"- home {w}: {cost_line(hr['mount_cost'])}")
        if "loader" in r.get("home_reads", {}):
            hl, cl = r["home_reads"]["loader"], r["reads"]["loader"]
            print(f"\ndata loader ({self.a.loader_threads} threads, shuffled): clone "
                  f"{cl['files'] / cl['read_s']:,.0f} files/s, home {hl['files'] / hl['read_s']:,.0f} "
                  f"files/s ({hl['read_s'] / cl['read_s']:.2f}x home)")
        print(f"(big file: {big})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hybridctl", default=os.environ.get("HYBRIDCTL", os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--small-min", type=int, default=1024)
    ap.add_argument("--small-max", type=int, default=32768)
    ap.add_argument("--loader-threads", type=int, default=8)
    ap.add_argument("--reads", default=",".join(READS), help=f"which of {','.join(READS)}")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--scratch", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", metavar="DIR", help="keep SeaweedFS and the pushed home in DIR "
                    "and read them again in later runs with --reuse DIR (write and push once, "
                    "then compare binaries); the clones are removed, DIR is kept")
    a = ap.parse_args()
    a.reads = [w for w in a.reads.split(",") if w]
    if set(a.reads) - set(READS):
        ap.error(f"--reads: one of {READS}")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    bench = CloneReadBench(a)
    try:
        bench.start()
        bench.run()
    finally:
        bench.cleanup()
        if a.json:
            with open(a.json, "w") as f:
                json.dump({k: v for k, v in bench.res.items() if k != "home"} |
                          {"home": {k: v for k, v in bench.res.get("home", {}).items()
                                    if k != "want"}}, f, indent=2)
    bench.report()


if __name__ == "__main__":
    main()
