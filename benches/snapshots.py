#!/usr/bin/env python3
"""hybridfs snapshot benchmark (see benches/README.md, "Snapshots").

Measures, in one run:

1. scale: `hybridctl snapshot create` and `hybridctl diff` wall-clock time against volume
   size (default 10k, 100k and 1M small files), each after the same fixed number of changes,
   next to a cold `find MP -type f | wc -l`, which grows with the volume;
2. write: sequential in-place overwrite of a 1 GiB file (1 MiB writes + fsync) without a
   snapshot in between vs right after a snapshot (every first write to a block is
   copy-on-write), with the same overwrite on a plain directory of the same disk for context.

Run through benches/snapshots.sh.  Standard library only; reuses the helpers of
benches/bench.py (unmount / abort FUSE / kill, drop caches).  Every workload runs in a child
process (`snapshots.py _work KIND JSON`) under a timeout; volumes are unmounted and mount
processes killed on exit, also on errors, Ctrl-C, SIGTERM and SIGHUP.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (helpers only; bench.main() is not run)

MiB = B.MiB
CHUNK = MiB
POOL = 1 << 20          # random bytes that small-file contents are cut from
MIN_FILE, MAX_FILE = 16, 4096

# --------------------------------------------------------------------------------------
# workers (run in a child process: `snapshots.py _work KIND JSON`); print one JSON line
# --------------------------------------------------------------------------------------


def file_path(root, i, per_dir):
    return os.path.join(root, f"d{i // per_dir:05d}", f"f{i % per_dir:05d}")


def w_populate(a):
    """Create the files of directories a["dirs"]: per_dir files each (the last directory
    may be short), sizes uniform in [16, 4096] bytes, random contents."""
    rng = random.Random(a["seed"])
    pool = rng.randbytes(POOL)
    n, per_dir, files, nbytes = a["files"], a["per_dir"], 0, 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for d in a["dirs"]:
        path = os.path.join(a["root"], f"d{d:05d}")
        os.mkdir(path)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(d * per_dir, min(n, (d + 1) * per_dir)):
                size = rng.randint(MIN_FILE, MAX_FILE)
                off = rng.randrange(0, POOL - size)
                fd = os.open(f"f{i % per_dir:05d}", flags, 0o644, dir_fd=dfd)
                try:
                    os.write(fd, pool[off:off + size])
                finally:
                    os.close(fd)
                files += 1
                nbytes += size
        finally:
            os.close(dfd)
    return {"seconds": time.perf_counter() - t0, "files": files, "bytes": nbytes}


def w_changes(a):
    """One round of changes: modify (64 random bytes written in place), create, delete,
    rename (to another directory)."""
    rng = random.Random(a["seed"])
    t0 = time.perf_counter()
    for p in a["modify"]:
        fd = os.open(p, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, rng.randbytes(64), rng.randrange(0, max(1, size - 64)))
        finally:
            os.close(fd)
    for p in a["create"]:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, rng.randbytes(rng.randint(MIN_FILE, MAX_FILE)))
        finally:
            os.close(fd)
    for p in a["delete"]:
        os.unlink(p)
    for src, dst in a["rename"]:
        os.rename(src, dst)
    return {"seconds": time.perf_counter() - t0}


def w_find(a):
    """Cold tree walk of the live tree (the .snapshots directory is pruned if it shows)."""
    root = a["dir"]
    cmd = (f"find {B.sh_quote(root)} -path {B.sh_quote(root + '/.snapshots')} -prune "
           f"-o -type f -print | wc -l")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True)
    return {"seconds": time.perf_counter() - t0, "files": int(p.stdout.strip())}


def w_write(a):
    """Write a["size"] bytes of fresh random data (generated before the clock starts) to
    a["path"] with 1 MiB write()s, then fsync.  mode "create" truncates/creates, mode
    "overwrite" writes over the existing file in place (no O_TRUNC; size must match).
    Returns the time from open to the end of fsync, and the SHA-256 of the 1 MiB chunks
    at a["sample"] (to check the snapshot and the live file afterwards)."""
    size = a["size"]
    buf = bytearray(os.urandom(size))
    mv = memoryview(buf)
    if a["mode"] == "create":
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    else:
        flags = os.O_WRONLY
    t0 = time.perf_counter()
    fd = os.open(a["path"], flags, 0o644)
    try:
        if a["mode"] == "overwrite" and os.fstat(fd).st_size != size:
            raise RuntimeError(f"{a['path']}: size {os.fstat(fd).st_size}, expected {size}")
        for off in range(0, size, CHUNK):
            part = mv[off:off + CHUNK]
            while len(part):
                n = os.write(fd, part)
                part = part[n:]
        os.fsync(fd)
        dt = time.perf_counter() - t0
        end_size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if end_size != size:
        raise RuntimeError(f"{a['path']}: size {end_size} after writing, expected {size}")
    sample = {str(o): hashlib.sha256(mv[o:o + CHUNK]).hexdigest() for o in a["sample"]}
    return {"seconds": dt, "bytes": size, "sample": sample}


def w_hash(a):
    """SHA-256 of the 1 MiB chunks of a["path"] at offsets a["sample"]."""
    out = {}
    with open(a["path"], "rb", buffering=0) as f:
        for o in a["sample"]:
            f.seek(o)
            out[str(o)] = hashlib.sha256(f.read(CHUNK)).hexdigest()
    return {"sample": out}


WORKERS = {"populate": w_populate, "changes": w_changes, "find": w_find,
           "write": w_write, "hash": w_hash}

# --------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------

log = B.log


class Volume(B.Hybridfs):
    """One hybridfs volume with its own HYBRIDFS_HOME and mount point under the scratch
    dir; teardown (from bench.Hybridfs) records the mount process's RSS, times
    `hybridctl umount` and runs `hybridctl fsck`."""

    def __init__(self, root, binary, volume, block_size):
        super().__init__(root, binary)
        self.volume = volume
        self.name = f"hybridfs:{volume}"
        self.home = os.path.join(root, f"home-{volume}")
        self.mp = os.path.join(root, f"mnt-{volume}")
        self.env = dict(os.environ, HYBRIDFS_HOME=self.home)
        self.block_size = block_size

    def setup(self):
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            raise RuntimeError(f"hybridctl not found at {self.bin} (set HYBRIDCTL)")
        os.mkdir(self.home)
        os.mkdir(self.mp)
        self.hc("format", self.volume, "--block-size", self.block_size)
        self.mounted = True  # from here on, cleanup must try to unmount
        self.hc("mount", self.volume, self.mp, "-d", timeout=120)
        with open(self.vol("mount.json")) as f:
            self.pid = int(json.load(f)["pid"])
        if not B.is_mounted(self.mp):
            raise RuntimeError(f"hybridctl mount returned 0 but {self.mp} is not a mount point")
        self.info["pid"] = self.pid
        self.dir = self.mp

    def remount(self):
        """Unmount (seals every file) and mount again; returns the seconds it took."""
        t0 = time.perf_counter()
        self.hc("umount", self.mp, timeout=900)
        if B.is_mounted(self.mp):
            raise RuntimeError(f"{self.mp} still mounted after hybridctl umount")
        B.kill_pid(self.pid, "old mount process")   # normally gone already
        self.hc("mount", self.volume, self.mp, "-d", timeout=120)
        with open(self.vol("mount.json")) as f:
            self.pid = int(json.load(f)["pid"])
        if not B.is_mounted(self.mp):
            raise RuntimeError(f"hybridctl mount returned 0 but {self.mp} is not a mount point")
        return time.perf_counter() - t0

    def timed(self, *args, timeout=600):
        """Run hybridctl ARGS --json; return (wall-clock seconds of the CLI, parsed JSON)."""
        t0 = time.perf_counter()
        p = self.hc(*args, "--volume", self.volume, "--json", timeout=timeout)
        dt = time.perf_counter() - t0
        return dt, json.loads(p.stdout)


def median(xs):
    return statistics.median(xs) if xs else None


class SnapBench:
    def __init__(self, a):
        self.a = a
        self.script = os.path.abspath(__file__)
        self.root = None
        self.vols = []
        self.errors = []
        self.scale = []      # one dict per volume size
        self.write = {}

    # ---------------------------------- helpers ---------------------------------------

    def spawn(self, kind, a):
        return subprocess.Popen([sys.executable, self.script, "_work", kind, json.dumps(a)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_all(self, t, procs, what, timeout, parse=True):
        """Wait for child processes touching target t (None: the local disk) until one
        shared deadline; on a timeout kill them (aborting t's FUSE connection if they stay
        stuck) and raise.  Returns the parsed JSON line of each."""
        deadline = time.monotonic() + timeout
        outs, failed = [], None
        try:
            for p in procs:
                out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
                if p.returncode != 0 and failed is None:
                    msg = (err or out).strip().splitlines() or ["(no output)"]
                    failed = f"{what} failed (exit {p.returncode}): {msg[-1][-500:]}"
                outs.append(out)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            for p in procs:
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    if t is not None:
                        log(f"{what}: child stuck after SIGKILL, aborting {t.mp}")
                        if not B.abort_fuse(t.mp):
                            t.kill_daemon()
                    try:
                        p.communicate(timeout=30)
                    except subprocess.TimeoutExpired:
                        log(f"{what}: child {p.pid} is still stuck; leaving it")
            if t is not None:
                t.broken = f"{what} timed out after {timeout}s"
            raise B.Timeout(f"{what} timed out after {timeout}s")
        if failed:
            raise RuntimeError(failed)
        return [json.loads(o.strip().splitlines()[-1]) for o in outs] if parse else outs

    def work(self, t, kind, timeout=None, **a):
        return self.wait_all(t, [self.spawn(kind, a)], kind, timeout or self.a.timeout)[0]

    def drop(self, t):
        self.wait_all(t, [subprocess.Popen(["sync"], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)],
                      "sync", self.a.timeout, parse=False)
        B.drop_caches()

    def cli_floor(self, t):
        """Wall clock of `hybridctl --version`: process start-up, the floor of every CLI
        time below."""
        ts = []
        for _ in range(self.a.reps):
            t0 = time.perf_counter()
            t.hc("--version", timeout=60)
            ts.append(time.perf_counter() - t0)
        return median(ts)

    def new_volume(self, name):
        v = Volume(self.root, self.a.hybridctl, name, self.a.block_size)
        self.vols.append(v)
        v.setup()
        return v

    def finish_volume(self, v, res):
        try:
            v.teardown(900)
        finally:
            res["mount_process"] = dict(v.info)
            if v.info.get("fsck_exit") not in (None, 0):
                self.errors.append(f"{v.volume}: fsck after umount exited "
                                   f"{v.info['fsck_exit']}: {v.info.get('fsck_output', '')[-500:]}")
            if v.info.get("odd"):
                self.errors.append(f"{v.volume}: {v.info['odd']}")

    # ---------------------------------- part 1 ----------------------------------------

    def changes_for(self, n, rnd, picks, per_dir, mp):
        """Paths of round rnd's changes: originals picked without repetition across rounds
        (so every round modifies/deletes/renames files untouched so far), new files and
        rename targets in random directories."""
        a = self.a
        ndirs = (n + per_dir - 1) // per_dir
        rng = random.Random(n * 1000 + rnd)
        take = lambda k: [picks.pop() for _ in range(k)]  # noqa: E731
        fp = lambda i: file_path(mp, i, per_dir)  # noqa: E731
        rd = lambda: os.path.join(mp, f"d{rng.randrange(ndirs):05d}")  # noqa: E731
        return {
            "modify": [fp(i) for i in take(a.modify)],
            "delete": [fp(i) for i in take(a.delete)],
            "rename": [[fp(i), os.path.join(rd(), f"r{rnd}_{j}")]
                       for j, i in enumerate(take(a.rename))],
            "create": [os.path.join(rd(), f"c{rnd}_{j}") for j in range(a.create)],
            "seed": n * 7919 + rnd,
        }

    def check_diff(self, n, rnd, d):
        """The diff of one round must show exactly the round's file changes."""
        a = self.a
        got = {}
        for e in d.get("entries", []):
            if e.get("kind") == "file":
                got[e["change"]] = got.get(e["change"], 0) + 1
        want = {"modified": a.modify, "added": a.create, "deleted": a.delete,
                "renamed": a.rename}
        want = {k: v for k, v in want.items() if v}
        if got != want:
            self.errors.append(f"{n} files, round {rnd}: diff lists files {got}, "
                               f"expected {want}")

    def scale_one(self, n):
        a = self.a
        per_dir = a.per_dir
        res = {"files": n, "per_dir": per_dir}
        self.scale.append(res)
        log(f"scale {n:,} files: format + mount")
        v = self.new_volume(f"s{n}")
        try:
            res["cli_floor_s"] = self.cli_floor(v)
            # populate, from a.jobs parallel children, directories split round-robin
            ndirs = (n + per_dir - 1) // per_dir
            procs = [self.spawn("populate", {"root": v.mp, "files": n, "per_dir": per_dir,
                                             "dirs": list(range(j, ndirs, a.jobs)),
                                             "seed": n + j})
                     for j in range(min(a.jobs, ndirs))]
            t0 = time.perf_counter()
            outs = self.wait_all(v, procs, "populate", a.timeout + n // 200)
            res["populate_s"] = time.perf_counter() - t0
            res["populate_bytes"] = sum(o["bytes"] for o in outs)
            made = sum(o["files"] for o in outs)
            if made != n:
                raise RuntimeError(f"populate made {made} files, expected {n}")
            log(f"scale {n:,}: populated in {res['populate_s']:.1f}s "
                f"({n / res['populate_s']:,.0f} files/s, "
                f"{res['populate_bytes'] / MiB:.0f} MiB)")
            # first snapshot: seals everything written by the populate
            dt, s = v.timed("snapshot", "create", "s0")
            res["first_create_s"] = dt
            res["s0"] = s
            log(f"scale {n:,}: first snapshot (after populate) {dt * 1000:.1f} ms: {s}")
            picks = random.Random(n).sample(range(n), a.reps * (a.modify + a.delete + a.rename))
            res["create_s"], res["diff_s"], res["changes_s"] = [], [], []
            res["diff_entries"], res["journal_rows"] = [], []
            for r in range(1, a.reps + 1):
                ch = self.changes_for(n, r, picks, per_dir, v.mp)
                out = self.work(v, "changes", **ch)
                res["changes_s"].append(out["seconds"])
                dt, _ = v.timed("snapshot", "create", f"s{r}")
                res["create_s"].append(dt)
                dd, d = v.timed("diff", f"s{r - 1}")
                res["diff_s"].append(dd)
                res["diff_entries"].append(len(d.get("entries", [])))
                res["journal_rows"].append(d.get("journal_rows"))
                self.check_diff(n, r, d)
                log(f"scale {n:,} round {r}: changes {out['seconds'] * 1000:.0f} ms, "
                    f"snapshot create {dt * 1000:.1f} ms, diff s{r - 1} {dd * 1000:.1f} ms "
                    f"({len(d.get('entries', []))} entries, {d.get('journal_rows')} "
                    f"journal rows)")
            # cold tree walk of the live tree
            res["find_s"] = []
            for r in range(a.find_runs):
                self.drop(v)
                out = self.work(v, "find", dir=v.mp, timeout=a.timeout + n // 1000)
                res["find_s"].append(out["seconds"])
                if out["files"] != n:
                    self.errors.append(f"{n} files: find counted {out['files']} files, "
                                       f"expected {n}")
                log(f"scale {n:,}: find -type f, cold: {out['seconds']:.2f}s, "
                    f"{out['files']:,} files")
            res["rss_kib"] = B.proc_status(v.pid).get("VmRSS")
        finally:
            self.finish_volume(v, res)

    # ---------------------------------- part 2 ----------------------------------------

    def write_part(self):
        a = self.a
        size = a.size_bytes
        sample = sorted(random.Random(size).sample(range(0, size // CHUNK), 8))
        sample = [c * CHUNK for c in sample]
        w = self.write = {"size_bytes": size, "runs": a.write_runs,
                          "local_initial": [], "local": [], "initial": [], "a": [], "b": [],
                          "c": [], "snapshot_before_b_s": [], "remount_s": []}

        def mbps(out):
            return out["bytes"] / out["seconds"] / 1e6

        # local: the same overwrite on a plain directory of the same disk
        local = os.path.join(self.root, "local")
        os.mkdir(local)
        lf = os.path.join(local, "big.bin")
        self.drop(None)
        out = self.work(None, "write", path=lf, size=size, mode="create", sample=[])
        w["local_initial"].append(mbps(out))
        for r in range(1, a.write_runs + 1):
            self.drop(None)
            out = self.work(None, "write", path=lf, size=size, mode="overwrite", sample=[])
            w["local"].append(mbps(out))
            log(f"write run {r}: local overwrite {mbps(out):.1f} MB/s")
        os.unlink(lf)

        log("write: format + mount")
        v = self.new_volume("w")
        try:
            big = os.path.join(v.mp, "big.bin")
            self.drop(v)
            out = self.work(v, "write", path=big, size=size, mode="create", sample=sample)
            w["initial"].append(mbps(out))
            log(f"write: initial 1 file write {mbps(out):.1f} MB/s")
            for r in range(1, a.write_runs + 1):
                # (a) overwrite with no snapshot since the last write
                self.drop(v)
                out_a = self.work(v, "write", path=big, size=size, mode="overwrite",
                                  sample=sample)
                w["a"].append(mbps(out_a))
                # (b) snapshot, then the same overwrite: every block is copied on write
                dt, _ = v.timed("snapshot", "create", f"w{r}")
                w["snapshot_before_b_s"].append(dt)
                self.drop(v)
                out_b = self.work(v, "write", path=big, size=size, mode="overwrite",
                                  sample=sample)
                w["b"].append(mbps(out_b))
                log(f"write run {r}: (a) no snapshot {mbps(out_a):.1f} MB/s, snapshot create "
                    f"{dt * 1000:.0f} ms, (b) after snapshot {mbps(out_b):.1f} MB/s")
                # untimed check: the snapshot holds (a)'s data, the live file (b)'s
                snap = self.work(v, "hash", path=os.path.join(v.mp, ".snapshots", f"w{r}",
                                                              "big.bin"), sample=sample)
                live = self.work(v, "hash", path=big, sample=sample)
                if snap["sample"] != out_a["sample"]:
                    self.errors.append(f"write run {r}: snapshot w{r} does not hold the data "
                                       f"written before it")
                if live["sample"] != out_b["sample"]:
                    self.errors.append(f"write run {r}: live file does not hold the data "
                                       f"written last")
                # (c) overwrite of a file whose data is sealed into blocks, with no snapshot
                # since: separates "the blocks are sealed" from "a snapshot holds them".
                # A remount seals everything (so does waiting --seal-delay, default 30 s).
                w["remount_s"].append(v.remount())
                self.drop(v)
                out_c = self.work(v, "write", path=big, size=size, mode="overwrite",
                                  sample=sample)
                w["c"].append(mbps(out_c))
                log(f"write run {r}: (c) sealed, no snapshot {mbps(out_c):.1f} MB/s")
            # cleanup of the snapshots, untimed for the table but recorded
            for r in range(1, a.write_runs + 1):
                v.hc("snapshot", "delete", f"w{r}", "--volume", v.volume)
            dt, g = v.timed("gc", "--grace", "0", timeout=900)
            w["gc_s"], w["gc"] = dt, g
            log(f"write: snapshots deleted, gc --grace 0 {dt:.2f}s: {g}")
        finally:
            self.finish_volume(v, w)

    # ---------------------------------- main ------------------------------------------

    def main(self):
        a = self.a
        self.load_start = os.getloadavg()
        try:
            self.bin_mtime = datetime.datetime.fromtimestamp(
                os.stat(a.hybridctl).st_mtime).astimezone().isoformat(timespec="seconds")
        except OSError:
            self.bin_mtime = None
        base = a.scratch or os.environ.get("TMPDIR") or "/var/tmp"
        self.root = tempfile.mkdtemp(prefix="hybridfs-snapbench.", dir=base)
        fstype = self.fstype(self.root)
        log(f"scratch dir: {self.root} ({fstype})")
        if fstype in ("tmpfs", "ramfs"):
            log(f"WARNING: {self.root} is on {fstype}, not a disk")
        self.t_start = time.time()
        if "scale" in a.parts:
            for n in a.sizes:
                try:
                    self.scale_one(n)
                except Exception as e:
                    self.errors.append(f"scale {n} files: {e}")
                    log(f"ERROR scale {n} files: {e}")
                    self.log_tail()
        if "write" in a.parts:
            try:
                self.write_part()
            except Exception as e:
                self.errors.append(f"write: {e}")
                log(f"ERROR write: {e}")
                self.log_tail()
        return self.report()

    def log_tail(self):
        if self.vols:
            log("mount.log tail:\n" + self.vols[-1].log_tail(10))

    @staticmethod
    def fstype(path):
        best, fs = "", None
        real = os.path.realpath(path)
        for mp, (_, t) in B.mountinfo().items():
            if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best, fs = mp, t
        return fs

    def cleanup(self):
        for v in self.vols:
            try:
                v.cleanup()
            except Exception as e:
                log(f"cleanup of {v.volume}: {e}")
        if self.root and os.path.isdir(self.root):
            still = [mp for mp in B.mountinfo() if mp.startswith(self.root + "/")]
            if still:
                log(f"NOT removing {self.root}: still mounted: {still}")
            elif self.a.keep:
                log(f"kept scratch dir {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------- report ----------------------------------------

    def report(self):
        a = self.a
        out = {
            "meta": {
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "duration_s": time.time() - self.t_start,
                "host": platform.node(), "kernel": platform.release(),
                "cpus": os.cpu_count(), "command": " ".join(sys.argv_orig),
                "sizes": a.sizes, "per_dir": a.per_dir, "reps": a.reps,
                "changes": {"modify": a.modify, "create": a.create, "delete": a.delete,
                            "rename": a.rename},
                "find_runs": a.find_runs, "write_size_bytes": a.size_bytes,
                "write_runs": a.write_runs, "block_size": a.block_size,
                "caches_dropped": bool(B.DROP_OK),
                "loadavg_start": self.load_start, "loadavg_end": os.getloadavg(),
                "hybridctl": a.hybridctl, "hybridctl_mtime": self.bin_mtime,
                "git_head": B.git_head(), "scratch_fs": self.fstype(self.root),
            },
            "scale": self.scale, "write": self.write, "errors": self.errors,
        }

        def ms(x):
            return "-" if x is None else f"{x * 1000:.1f}"

        def sec(x):
            return "-" if x is None else f"{x:.2f}"

        def ratio(x, y):
            return None if not x or not y else x / y

        def fr(x):
            return "-" if x is None else f"{x:.2f}x"

        def table(hdr, body, left=(0,)):
            widths = [max(len(r[i]) for r in [hdr] + body) for i in range(len(hdr))]

            def line(r):
                return "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(r, widths))) + " |"
            print(line(hdr))
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
            for r in body:
                print(line(r))

        print()
        print(f"hybridfs snapshot benchmark  {out['meta']['date']}  "
              f"({out['meta']['duration_s'] / 60:.1f} min)  caches dropped={bool(B.DROP_OK)}")
        print(f"hybridctl: {a.hybridctl} (built {self.bin_mtime}), repo at "
              f"{out['meta']['git_head']}; scratch on {out['meta']['scratch_fs']}; load "
              f"average at start/end: " + " / ".join(f"{x[0]:.2f}" for x in
                                                    (self.load_start, os.getloadavg())))
        done = [s for s in self.scale if s.get("create_s")]
        if done:
            for s in done:
                s["median"] = {"create_s": median(s["create_s"]), "diff_s": median(s["diff_s"]),
                               "find_s": median(s.get("find_s", []))}
            print()
            print(f"1. snapshot create / diff vs volume size: files of {MIN_FILE}..{MAX_FILE} B "
                  f"in directories of {a.per_dir}; each of {a.reps} rounds: {a.modify} "
                  f"modified, {a.create} created, {a.delete} deleted, {a.rename} renamed, then "
                  f"`snapshot create s<r>` and `diff s<r-1>` (to the live tree), median of "
                  f"{a.reps}; find: `find MP -type f | wc -l` after drop caches, median of "
                  f"{a.find_runs}")
            hdr = ("files", "populate (files/s)", "first snapshot (ms)",
                   "snapshot create (ms)", "diff (ms)", "diff entries / journal rows",
                   "find cold (s)", "CLI start-up (ms)")
            body = []
            for s in done:
                m = s["median"]
                body.append((f"{s['files']:,}", f"{s['files'] / s['populate_s']:,.0f}",
                             ms(s.get("first_create_s")), ms(m["create_s"]), ms(m["diff_s"]),
                             f"{median(s['diff_entries']):.0f} / "
                             f"{median([j for j in s['journal_rows'] if j is not None] or [0]):.0f}",
                             sec(m["find_s"]), ms(s.get("cli_floor_s"))))
            if len(done) > 1:
                lo, hi = done[0], done[-1]
                rc = ratio(hi["median"]["create_s"], lo["median"]["create_s"])
                rd = ratio(hi["median"]["diff_s"], lo["median"]["diff_s"])
                rf = ratio(hi["median"]["find_s"], lo["median"]["find_s"])
                r1 = ratio(hi.get("first_create_s"), lo.get("first_create_s"))
                out["scale_ratios"] = {"from": lo["files"], "to": hi["files"],
                                       "files": hi["files"] / lo["files"],
                                       "first_create": r1, "create": rc, "diff": rd,
                                       "find": rf}
                body.append((f"ratio {hi['files']:,}/{lo['files']:,} "
                             f"(x{hi['files'] / lo['files']:g} files)", "",
                             fr(r1), fr(rc), fr(rd), "", fr(rf), ""))
            table(hdr, body)
            print("per-round times (ms), create | diff:")
            for s in done:
                print(f"  {s['files']:>9,}: "
                      + " ".join(f"{x * 1000:.1f}" for x in s["create_s"]) + " | "
                      + " ".join(f"{x * 1000:.1f}" for x in s["diff_s"]))
        w = self.write
        if w.get("b"):
            ma, mb, ml = median(w["a"]), median(w["b"]), median(w["local"])
            mc = median(w["c"])
            w["median"] = {"local": ml, "a": ma, "b": mb, "c": mc, "b_over_a": ratio(mb, ma),
                           "b_over_c": ratio(mb, mc),
                           "snapshot_before_b_s": median(w["snapshot_before_b_s"])}
            print()
            print(f"2. sequential in-place overwrite of a {a.size_bytes // MiB} MiB file, "
                  f"1 MiB write()s + fsync, median of {a.write_runs} (MB/s = 10^6 B/s; "
                  f"caches dropped before each)")
            hdr = ("metric", "MB/s", "runs", "vs local")
            body = [
                ("local overwrite (same disk)", f"{ml:.1f}",
                 ", ".join(f"{x:.0f}" for x in w["local"]), "1.00x"),
                ("hybridfs (a) overwrite, no snapshot (file not sealed yet)", f"{ma:.1f}",
                 ", ".join(f"{x:.0f}" for x in w["a"]), fr(ratio(ma, ml))),
                ("hybridfs (b) overwrite right after a snapshot", f"{mb:.1f}",
                 ", ".join(f"{x:.0f}" for x in w["b"]), fr(ratio(mb, ml))),
                ("b/a", fr(ratio(mb, ma)), "", ""),
                ("hybridfs (c) overwrite of a sealed file, no snapshot (after a remount)",
                 "-" if mc is None else f"{mc:.1f}", ", ".join(f"{x:.0f}" for x in w["c"]), fr(ratio(mc, ml))),
                ("b/c", fr(ratio(mb, mc)), "", ""),
                ("hybridfs first write of the file (create)", f"{median(w['initial']):.1f}",
                 "", fr(ratio(median(w["initial"]), median(w["local_initial"])))),
                ("local first write of the file (create)", f"{median(w['local_initial']):.1f}",
                 "", ""),
            ]
            table(hdr, body)
            print("snapshot create right before (b), ms: "
                  + ", ".join(f"{x * 1000:.0f}" for x in w["snapshot_before_b_s"])
                  + (f"; after deleting the snapshots, gc --grace 0: {w['gc_s']:.2f}s, "
                     f"{w['gc'].get('bytes_freed', 0) / MiB:.0f} MiB freed"
                     if w.get("gc") else ""))
        for name, info in [(s["files"], s.get("mount_process", {})) for s in self.scale] + \
                [("write", w.get("mount_process", {}))]:
            if info.get("fsck_exit") is not None or info.get("umount_s") is not None:
                print(f"volume {name}: umount {info.get('umount_s', 0):.2f}s, peak RSS "
                      f"{(info.get('peak_rss_kib') or 0) / 1024:.1f} MiB, fsck exit "
                      f"{info.get('fsck_exit')}")
        if self.errors:
            print("\nerrors:")
            for e in self.errors:
                print("  - " + e)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
            log(f"wrote {a.json}")
        return 1 if self.errors else 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "_work":
        res = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(res))
        return 0
    sys.argv_orig = [os.environ.get("BENCH_ARGV0", sys.argv[0])] + sys.argv[1:]
    ap = argparse.ArgumentParser(
        prog="snapshots.sh",
        description="hybridfs snapshots: create/diff time vs volume size, and write "
                    "throughput right after a snapshot")
    ap.add_argument("--sizes", default="10000,100000,1000000",
                    help="volume sizes in files, comma-separated (default 10000,100000,1000000)")
    ap.add_argument("--per-dir", type=int, default=1000, help="files per directory (1000)")
    ap.add_argument("--jobs", type=int, default=4, help="parallel populating processes (4)")
    ap.add_argument("--reps", type=int, default=5,
                    help="rounds of changes + snapshot create + diff per size (5)")
    ap.add_argument("--modify", type=int, default=100, help="files modified per round (100)")
    ap.add_argument("--create", type=int, default=100, help="files created per round (100)")
    ap.add_argument("--delete", type=int, default=100, help="files deleted per round (100)")
    ap.add_argument("--rename", type=int, default=10, help="files renamed per round (10)")
    ap.add_argument("--find-runs", type=int, default=3, help="cold find runs per size (3)")
    ap.add_argument("--size", default="1G", help="file size of the write part (1G)")
    ap.add_argument("--write-runs", type=int, default=3, help="runs of the write part (3)")
    ap.add_argument("--block-size", default="1M", help="volume block size (1M)")
    ap.add_argument("--parts", default="scale,write", help="scale,write (both)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 2000,10000, 2 rounds, 1 find, 64M, 1 write run")
    ap.add_argument("--json", help="write machine-readable results here")
    ap.add_argument("--scratch", help="parent dir of the scratch dir (default $TMPDIR or "
                                      "/var/tmp); must be a real disk")
    ap.add_argument("--timeout", type=int, default=900, help="per-step timeout, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.reps, a.find_runs, a.size, a.write_runs = "2000,10000", 2, 1, "64M", 1
    try:
        a.sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes: comma-separated integers")
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    a.size_bytes = B.parse_size(a.size)
    per_round = a.modify + a.delete + a.rename
    if set(a.parts) - {"scale", "write"} or not a.parts:
        ap.error("--parts: scale and/or write")
    if min(a.reps, a.per_dir, a.jobs, a.find_runs, a.write_runs) < 1 or \
            min(a.modify, a.create, a.delete, a.rename) < 0:
        ap.error("bad numbers")
    if "scale" in a.parts and (not a.sizes or min(a.sizes) < a.reps * per_round):
        ap.error(f"--sizes: every size must be >= reps * (modify + delete + rename) = "
                 f"{a.reps * per_round}")
    if a.size_bytes < CHUNK * 8 or a.size_bytes % CHUNK:
        ap.error("--size: a multiple of 1 MiB, at least 8 MiB")
    a.hybridctl = os.environ.get("HYBRIDCTL") or os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")

    bench = SnapBench(a)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return bench.main()
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
