#!/usr/bin/env python3
"""Sequential write + fsync with `mount.blocks_to_store = on-fsync` against the default (`later`)
(see benches/README.md, "Blocks to the store at fsync").

One SeaweedFS S3 server on 127.0.0.1 (started here) holds the stores of two volumes mounted
side by side: `later` (fsync makes the data durable on this host; blocks go at push) and
`on-fsync` (fsync returns once the file's new blocks are in the store: the data path of a
volume several hosts share). The local disk under the scratch directory is the reference.
Per run and target: write SIZE in 1 MiB writes of incompressible bytes to a new file, fsync
(once at the end: `--fsync-every 0`, a checkpoint; or every N MiB), close; MB/s over the
whole (write + fsync + close). The file is removed between runs. Prints a table with the
medians and their ratios, and writes --json.

Run through benches/fsync_store.sh. Reuses push.py's SeaweedFS helper and bench.py's
unmount / kill helpers; on any exit the mounts are unmounted, the mount processes and the S3
server stopped and the scratch directory removed.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import push as P  # noqa: E402

MiB = 1 << 20
log = B.log


def write_fsync(path, size, every, buf):
    """Seconds to write `size` bytes in 1 MiB writes, fsync (every `every` bytes, and at the
    end) and close."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = since = 0
        while done < size:
            n = os.write(fd, buf[: min(len(buf), size - done)])
            done += n
            since += n
            if every and since >= every:
                os.fsync(fd)
                since = 0
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hybridctl", default=os.environ.get("HYBRIDCTL", "target/release/hybridctl"))
    ap.add_argument("--size", type=int, default=256, help="MiB per file (default 256)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fsync-every", type=int, default=0, help="MiB between fsyncs (0: once at the end)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="hybridfs-fsync-store.", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    weed, vols = P.Weed(root), []

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        conf = os.path.join(root, "rclone.conf")

        def write_conf(endpoint):
            with open(conf, "w") as f:
                f.write(f"[s3]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {P.ACCESS_KEY}\n"
                        f"secret_access_key = {P.SECRET_KEY}\nendpoint = {endpoint}\n"
                        f"force_path_style = true\nregion = {P.REGION}\n")

        def rclone(*args):
            return B.run_cmd(["rclone", "--config", conf, *args], timeout=30, check=False)

        log("starting SeaweedFS")
        weed.start(write_conf, lambda: rclone("mkdir", "s3:ready", "--retries", "1").returncode == 0)
        rclone("mkdir", "s3:fsync")
        aws = {"AWS_ENDPOINT_URL": weed.endpoint, "AWS_ACCESS_KEY_ID": P.ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": P.SECRET_KEY, "AWS_REGION": P.REGION,
               "AWS_EC2_METADATA_DISABLED": "true"}
        bin_copy = os.path.join(root, "hybridctl")
        shutil.copy2(a.hybridctl, bin_copy)
        targets = {"local": os.path.join(root, "local")}
        os.mkdir(targets["local"])
        for mode in ("later", "on-fsync"):
            v = P.Vol(root, bin_copy, mode.replace("-", ""), aws, store=f"s3://fsync/{mode}", block_size="1M")
            v.env["HYBRIDFS_MOUNT_BLOCKS_TO_STORE"] = mode
            vols.append(v)
            v.setup()
            targets[f"hybridfs {mode}"] = v.mp
        buf = os.urandom(MiB)
        size, every = a.size * MiB, a.fsync_every * MiB
        secs = {t: [] for t in targets}
        for run in range(a.runs):
            for t, d in targets.items():
                path = os.path.join(d, "f")
                s = write_fsync(path, size, every, buf)
                secs[t].append(s)
                log(f"run {run + 1} {t}: {size / MiB / s:.0f} MiB/s ({s:.2f} s)")
                os.remove(path)
        res = {t: {"seconds": s, "mib_s_median": a.size / statistics.median(s)} for t, s in secs.items()}
        local = res["local"]["mib_s_median"]
        later = res["hybridfs later"]["mib_s_median"]
        print(f"\nseq write {a.size} MiB + fsync ({'once' if not every else f'every {a.fsync_every} MiB'}), "
              f"median of {a.runs}")
        print(f"{'target':<20} {'MiB/s':>8} {'vs local':>9} {'vs later':>9}")
        for t, r in res.items():
            m = r["mib_s_median"]
            print(f"{t:<20} {m:>8.0f} {m / local:>8.2f}x {m / later:>8.2f}x")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"size_mib": a.size, "runs": a.runs, "fsync_every_mib": a.fsync_every,
                           "results": res}, f, indent=2)
        for v in vols:
            for line in v.log_problems():
                log(f"{v.volume} mount.log: {line}")
    finally:
        for v in vols:
            try:
                v.cleanup()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup of {v.volume}: {e}")
        weed.stop()
        still = [mp for mp in B.mountinfo() if mp.startswith(root + "/")]
        if still:
            log(f"NOT removing {root}: still mounted: {still}")
        elif not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
