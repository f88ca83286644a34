//! The PostgreSQL engine behind [`hybridfs_core::kv::Kv`]: one metadata store that several
//! hosts share (issue 15). The key layout, versions, the journal and reference counts are
//! core's (`hybridfs_core::meta`); this crate only stores bytes, in one table:
//!
//! ```text
//! hybridfs_kv (cf smallint, k bytea, v bytea, primary key (cf, k))
//! ```
//!
//! `cf` is the column family's index in [`Cf::ALL`]; `bytea` compares byte-wise, so key order
//! is the same as RocksDB's. Plain SQL only (no extensions), so PostgreSQL-compatible
//! distributed engines can serve later.
//!
//! # Transactions
//!
//! [`Kv::transact`] runs the body in a `SERIALIZABLE` transaction: reads go to the database
//! inside it (under an [`Overlay`] of the body's own writes), the writes are sent at the end
//! (one upsert, one delete per family), then `COMMIT`. Round trips are what a shared volume's
//! operations wait for, so a transaction makes few: `BEGIN` goes in one message with its first
//! read, the rows a batch will read are asked for at once ([`KvRead::prefetch`], one
//! statement of one index scan per family, and a `LIMIT`ed index scan per range it will scan
//! from its start: the history of each row it deletes, the open rows it checks; a scan of such
//! a range starts from the rows read ahead), and the writes, the change notifications and
//! `COMMIT` go in one message (the simple query protocol; `bytea` as `decode('HEX', 'hex')`,
//! plain SQL). A create is two round trips. Reads outside a transaction are one statement
//! each, a scan too when one page holds its range (only a longer scan opens a read-only
//! `REPEATABLE READ` transaction, so that its pages read one snapshot). A serialization
//! failure or deadlock, on any statement or the commit, is [`FsError::MetaConflict`], and the
//! whole transaction runs again ([`retry_conflicts`]). So two hosts incrementing one reference
//! count, or creating one name, end with one result, never a lost update.
//!
//! A lost connection is [`FsError::MetaUnavailable`]; the pooled connection is dropped and the
//! next use connects again. `sync` is a no-op: a committed transaction is durable
//! (`synchronous_commit` on, the PostgreSQL default).
//!
//! # The database going away
//!
//! Connecting waits at most the URL's `connect_timeout` ([`CONNECT_TIMEOUT`] when it gives
//! none). An operation that finds the database unavailable (down, restarting, refusing
//! connections) tries again, pausing 100 ms doubling to 1 s, until it has waited
//! [`PgKv::set_wait`] in all ([`DEFAULT_WAIT`]); then it fails with
//! [`FsError::MetaUnavailable`] (EIO to a file system caller). A transaction whose connection
//! broke is run again whole (its body may run more than once anyway).
//!
//! # Ambiguous commits
//!
//! A transaction whose connection broke after its `COMMIT` was sent may have committed or
//! not. Each writing transaction therefore writes a token row (family id [`TOKEN_CF`], key
//! a random u64 of this [`Kv::transact`] call, value the unix seconds) in its own upsert (no
//! round trip more); before running it again after such a break, the token is looked up: if
//! the first run committed, the call reports its success (and runs its commit hooks) instead
//! of running again (whose checks would see its own change: `EEXIST` for a create that did
//! happen). Tokens older than [`TOKEN_KEEP`] are deleted once a minute.

use hybridfs_core::error::{FsError, Result};
use hybridfs_core::kv::{retry_conflicts, Cf, Head, Kv, KvOp, KvRead, Overlay, TxnBody, Visit};
use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls, Statement};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long connecting waits when the URL sets no `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation waits for an unavailable database before it fails.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The family id of transaction tokens (see "Ambiguous commits"): no [`Cf`] has it, so no
/// scan of the store's families sees them. The last id: the tokens' index pages (a random
/// key inserted by every writing transaction) border only the default family's last rows
/// (usage delta rows, read by no transaction). Under -1 (before 2026-12-02) they bordered the
/// first inodes (the root and the first directories, read by most transactions): a token
/// inserted into that index page was a serialization conflict with every transaction that
/// had read one of those inodes (`SERIALIZABLE` locks what a read saw by index page).
pub const TOKEN_CF: i16 = i16::MAX;
/// Where tokens were kept before; old ones are deleted with the new ones.
const OLD_TOKEN_CF: i16 = -1;
/// How long a transaction's token is kept: far longer than an operation waits for the
/// database ([`DEFAULT_WAIT`]), which bounds when its rerun can ask.
pub const TOKEN_KEEP: Duration = Duration::from_secs(600);

/// Rows a scan fetches per query (its memory bound).
const SCAN_PAGE: i64 = 512;
/// Idle connections kept for reuse.
const POOL: usize = 8;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS hybridfs_kv (
    cf smallint NOT NULL,
    k bytea NOT NULL,
    v bytea NOT NULL,
    PRIMARY KEY (cf, k)
)";

pub struct PgKv {
    config: postgres::Config,
    /// This engine's id in its change notifications (so its listener skips its own).
    sender: u64,
    idle: Mutex<Vec<Conn>>,
    /// How long an operation waits for an unavailable database, in milliseconds.
    wait_ms: std::sync::atomic::AtomicU64,
    /// Unix seconds of the last deletion of old tokens.
    tokens_cleared: std::sync::atomic::AtomicU64,
    /// Tests: this many commits more report a lost connection after they committed.
    lose_commits: std::sync::atomic::AtomicU32,
}

/// A transaction whose `COMMIT` got no answer: its token and the commit hooks to run if it
/// turns out to have committed.
struct Unanswered {
    token: u64,
    hooks: Vec<hybridfs_core::kv::CommitHook>,
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_pg_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn cf_id(cf: Cf) -> i16 {
    Cf::ALL.iter().position(|c| *c == cf).expect("every Cf is in Cf::ALL") as i16
}

/// An engine error as core's typed error: conflicts and lost connections are transient.
fn pg_err(what: &str) -> impl Fn(postgres::Error) -> FsError + '_ {
    move |e| {
        // The client's own errors ("error connecting to server") say why in their source.
        let why = match std::error::Error::source(&e) {
            Some(src) if e.as_db_error().is_none() => format!("{what}: {e}: {src}"),
            _ => format!("{what}: {e}"),
        };
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                FsError::MetaConflict(why)
            }
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CANNOT_CONNECT_NOW => FsError::MetaUnavailable(why),
            None if e.is_closed() || e.as_db_error().is_none() => FsError::MetaUnavailable(why),
            _ => FsError::Meta(why),
        }
    }
}

impl PgKv {
    /// Connect to `url` (`postgres://USER@HOST:PORT/DB`, libpq syntax also accepted) and create
    /// the table if it is not there.
    pub fn connect(url: &str) -> Result<PgKv> {
        let kv = PgKv::unconnected(url)?;
        let mut c = kv.raw_client()?;
        c.batch_execute(SCHEMA).map_err(pg_err("create the metadata table"))?;
        kv.put_back(Conn::new(c)?);
        Ok(kv)
    }

    /// Connect to `url`, which must already hold the metadata table (a volume formatted
    /// there): a database that does not is [`FsError::NotFound`], and is left unchanged.
    pub fn connect_existing(url: &str) -> Result<PgKv> {
        let kv = PgKv::unconnected(url)?;
        let mut c = kv.raw_client()?;
        let row = c.query_one("SELECT to_regclass('hybridfs_kv') IS NOT NULL", &[]).map_err(pg_err("look for the metadata table"))?;
        if !row.get::<_, bool>(0) {
            return Err(FsError::NotFound);
        }
        kv.put_back(Conn::new(c)?);
        Ok(kv)
    }

    fn unconnected(url: &str) -> Result<PgKv> {
        let mut config: postgres::Config =
            url.parse().map_err(|e| FsError::Meta(format!("bad database URL {}: {e}", redact(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let wait_ms = std::sync::atomic::AtomicU64::new(DEFAULT_WAIT.as_millis() as u64);
        let sender = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
        Ok(PgKv {
            config,
            sender,
            idle: Mutex::new(Vec::new()),
            wait_ms,
            tokens_cleared: std::sync::atomic::AtomicU64::new(0),
            lose_commits: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// How long an operation waits for an unavailable database before it fails with
    /// [`FsError::MetaUnavailable`] (see the module comment).
    pub fn set_wait(&self, wait: Duration) {
        self.wait_ms.store(wait.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Run `op` again while the database is unavailable, for at most the wait.
    fn waiting<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let wait = Duration::from_millis(self.wait_ms.load(std::sync::atomic::Ordering::Relaxed));
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match op() {
                Err(FsError::MetaUnavailable(why)) if Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!("the metadata database is unavailable ({why}); waiting up to {wait:?}");
                        warned = true;
                    }
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(FsError::MetaUnavailable(why)) => {
                    return Err(FsError::MetaUnavailable(format!("{why} (waited {wait:?} for the database)")))
                }
                other => {
                    if warned && other.is_ok() {
                        tracing::info!("the metadata database answers again");
                    }
                    return other;
                }
            }
        }
    }

    fn raw_client(&self) -> Result<Client> {
        self.config.connect(NoTls).map_err(pg_err("connect to the metadata database"))
    }

    fn client(&self) -> Result<Conn> {
        while let Some(c) = self.idle.lock().pop() {
            if !c.c.is_closed() {
                return Ok(c);
            }
        }
        Conn::new(self.raw_client()?)
    }

    fn put_back(&self, c: Conn) {
        let mut idle = self.idle.lock();
        if !c.c.is_closed() && idle.len() < POOL {
            idle.push(c);
        }
    }

    /// Run `f` on a pooled connection (returned to the pool unless it broke).
    fn with<T>(&self, f: impl FnOnce(&mut Client, &Stmts) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let out = f(&mut c.c, &c.st);
        self.put_back(c);
        out
    }

    /// [`PgKv::with`] run again while the database is unavailable (see [`PgKv::waiting`]).
    fn with_waiting<T>(&self, mut f: impl FnMut(&mut Client, &Stmts) -> Result<T>) -> Result<T> {
        self.waiting(|| self.with(&mut f))
    }

    /// Tests: the next `n` commits that write report a lost connection after they committed
    /// (the ambiguous commit of the module comment).
    #[doc(hidden)]
    pub fn lose_commit_answers(&self, n: u32) {
        self.lose_commits.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the transaction with `token` committed.
    fn committed(&self, token: u64) -> Result<bool> {
        self.with(|c, st| {
            let row = c.query_opt(&st.get, &[&TOKEN_CF, &&token.to_be_bytes()[..]]).map_err(pg_err("look for a transaction's token"))?;
            Ok(row.is_some())
        })
    }

    /// Delete tokens older than [`TOKEN_KEEP`], at most once a minute (errors only logged).
    fn clear_old_tokens(&self, c: &mut Client) {
        let now = unix_secs();
        let last = self.tokens_cleared.load(std::sync::atomic::Ordering::Relaxed);
        if now < last + 60
            || self.tokens_cleared.compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_err()
        {
            return;
        }
        let before = now.saturating_sub(TOKEN_KEEP.as_secs()).to_be_bytes();
        if let Err(e) = c.execute("DELETE FROM hybridfs_kv WHERE cf IN ($1, $2) AND v < $3", &[&TOKEN_CF, &OLD_TOKEN_CF, &&before[..]]) {
            tracing::debug!("delete old transaction tokens: {e}");
        }
    }

    /// One attempt at a transaction; a conflict comes back as [`FsError::MetaConflict`].
    /// `unanswered`: an earlier attempt of this call whose `COMMIT` got no answer; if its
    /// token is in, that attempt committed and this one only reports it.
    fn attempt(&self, body: &mut TxnBody<'_>, token: u64, unanswered: &mut Option<Unanswered>) -> Result<()> {
        if let Some(u) = unanswered.as_ref() {
            if self.committed(u.token)? {
                tracing::info!("a transaction whose commit got no answer had committed: not run again");
                for hook in unanswered.take().expect("checked").hooks {
                    hook();
                }
                return Ok(());
            }
            *unanswered = None;
        }
        let mut conn = self.client()?;
        let Conn { c, st } = &mut conn;
        let reader = Reader { c: RefCell::new(c), st, cache: RefCell::new(HashMap::new()), heads: RefCell::new(HashMap::new()), begun: Cell::new(false) };
        let result = (|| {
            let mut overlay = Overlay::new(&reader);
            body(&mut overlay)?;
            let (ops, hooks) = overlay.finish();
            let notes = change_notes(self.sender, &ops);
            let writes = !ops.is_empty();
            let mut done = reader.commit(ops, notes, writes.then_some(token));
            if done.is_ok() && writes && self.lose_commits.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                self.lose_commits.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                done = Err(FsError::MetaUnavailable("the connection broke after COMMIT was sent (injected)".into()));
            }
            match done {
                Err(FsError::MetaUnavailable(why)) if writes => {
                    *unanswered = Some(Unanswered { token, hooks });
                    Err(FsError::MetaUnavailable(why))
                }
                Err(e) => Err(e),
                Ok(()) => Ok(hooks),
            }
        })();
        if result.is_err() && reader.begun.get() {
            // Whatever state the failure left (aborted, ended, or broken), end it; a broken
            // connection is not put back.
            let _ = reader.c.borrow_mut().batch_execute("ROLLBACK");
        }
        drop(reader);
        if result.is_ok() {
            self.clear_old_tokens(&mut conn.c);
        }
        self.put_back(conn);
        for hook in result? {
            hook();
        }
        Ok(())
    }
}

/// The channel of change notifications (`LISTEN`/`NOTIFY`): per database, so per volume.
pub const CHANNEL: &str = "hybridfs_changes";

/// How long the listener waits for more notifications before it passes on what it has.
const NOTE_GATHER: Duration = Duration::from_millis(5);

/// The longest the listener holds a notification back while more keep coming.
const NOTE_GATHER_MAX: Duration = Duration::from_millis(50);
/// A notification's payload stays under PostgreSQL's limit (8000 bytes).
const NOTE_BYTES: usize = 7000;

/// The notifications of a transaction's writes to inodes and directory entries: payloads
/// `SENDER;CF:HEXKEY,CF:HEXKEY,...` (CF the family's index in [`Cf::ALL`]), sent inside the
/// transaction, so delivered only if and when it commits (PostgreSQL's rule).
fn change_notes(sender: u64, ops: &[KvOp]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut cur = String::new();
    for op in ops {
        let (KvOp::Put(cf, k, _) | KvOp::Del(cf, k)) = op;
        if !matches!(cf, Cf::Inodes | Cf::Dentries | Cf::Snapshots) {
            continue;
        }
        if cur.len() + 2 * k.len() + 8 > NOTE_BYTES && !cur.is_empty() {
            notes.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur = format!("{sender:x};");
        } else {
            cur.push(',');
        }
        cur.push_str(&format!("{}:", cf_id(*cf)));
        for b in k {
            cur.push_str(&format!("{b:02x}"));
        }
    }
    if !cur.is_empty() {
        notes.push(cur);
    }
    notes
}

/// The rows a notification names: `(family, key)`, unless `sender` sent it.
fn parse_note(own: u64, payload: &str) -> Vec<(Cf, Vec<u8>)> {
    let Some((from, rows)) = payload.split_once(';') else { return Vec::new() };
    if u64::from_str_radix(from, 16).ok() == Some(own) {
        return Vec::new();
    }
    rows.split(',')
        .filter_map(|row| {
            let (cf, hex) = row.split_once(':')?;
            let cf = *Cf::ALL.get(cf.parse::<usize>().ok()?)?;
            let key = (0..hex.len() / 2).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
            Some((cf, key))
        })
        .collect()
}

impl PgKv {
    /// Call `changed` with the inode and directory-entry rows (family, key) every other
    /// engine on this database commits (another host's namespace change), from a thread of
    /// its own with a connection of its own that `LISTEN`s; it reconnects after a lost
    /// connection (what was committed meanwhile is not told). Stops once `changed` returns
    /// false (checked at least once a second, also when nothing changed).
    pub fn listen(&self, mut changed: impl FnMut(Vec<(Cf, Vec<u8>)>) -> bool + Send + 'static) -> std::io::Result<()> {
        use postgres::fallible_iterator::FallibleIterator;
        let config = self.config.clone();
        let own = self.sender;
        std::thread::Builder::new().name("meta-listen".into()).spawn(move || loop {
            let mut client = match config.connect(NoTls).and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|_| c)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("listen for metadata changes: {e}");
                    if !changed(Vec::new()) {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            loop {
                let mut batch = Vec::new();
                let mut notes = client.notifications();
                let mut since = None;
                let broken = loop {
                    // A batch goes as soon as notifications pause, or NOTE_GATHER_MAX after
                    // its first (not after a quiet second: another host's steady stream of
                    // changes held it back until 4096 rows).
                    let wait = if batch.is_empty() { Duration::from_secs(1) } else { NOTE_GATHER };
                    match notes.timeout_iter(wait).next() {
                        Ok(Some(n)) => {
                            batch.extend(parse_note(own, n.payload()));
                            let first = *since.get_or_insert_with(std::time::Instant::now);
                            if !batch.is_empty() && first.elapsed() >= NOTE_GATHER_MAX {
                                break false;
                            }
                        }
                        Ok(None) => break false,
                        Err(e) => {
                            tracing::debug!("listen for metadata changes: {e}");
                            break true;
                        }
                    }
                    if batch.len() > 4096 {
                        break false;
                    }
                };
                drop(notes);
                if !changed(batch) {
                    return;
                }
                if broken || client.is_closed() {
                    break;
                }
            }
        })?;
        Ok(())
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Send a transaction's writes: every put in one upsert (with the transaction's token row, if
/// any), every delete in one statement.
fn write(t: &mut impl GenericClient, st: &Stmts, ops: Vec<KvOp>, token: Option<u64>) -> Result<()> {
    let (mut pcf, mut pk, mut pv) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(token) = token {
        pcf.push(TOKEN_CF);
        pk.push(token.to_be_bytes().to_vec());
        pv.push(unix_secs().to_be_bytes().to_vec());
    }
    let (mut dcf, mut dk) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            KvOp::Put(cf, k, v) => {
                pcf.push(cf_id(cf));
                pk.push(k);
                pv.push(v);
            }
            KvOp::Del(cf, k) => {
                dcf.push(cf_id(cf));
                dk.push(k);
            }
        }
    }
    if !pk.is_empty() {
        t.execute(&st.upsert, &[&pcf, &pk, &pv]).map_err(pg_err("write metadata"))?;
    }
    // Per family `cf = $1 AND k = ANY($2)`: an index scan (a join with an unnest may scan the
    // table, which under SERIALIZABLE reads, and so conflicts with, every row).
    let mut by_cf: std::collections::BTreeMap<i16, Vec<Vec<u8>>> = std::collections::BTreeMap::new();
    for (cf, k) in dcf.into_iter().zip(dk) {
        by_cf.entry(cf).or_default().push(k);
    }
    for (cf, ks) in by_cf {
        t.execute(&st.delete, &[&cf, &ks]).map_err(pg_err("delete metadata"))?;
    }
    Ok(())
}

fn get(c: &mut impl GenericClient, st: &Stmts, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let row = c
        .query_opt(&st.get, &[&cf_id(cf), &key])
        .map_err(pg_err("read metadata"))?;
    Ok(row.map(|r| r.get(0)))
}

fn multi_get(c: &mut impl GenericClient, st: &Stmts, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
    let rows = c
        .query(&st.multi_get, &[&cf_id(cf), &keys])
        .map_err(pg_err("read metadata"))?;
    let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(keys.iter().map(|k| found.remove(*k)).collect())
}

/// One page of a scan: up to [`SCAN_PAGE`] rows of `cf` from `from` (inclusive) to `end`.
fn page(c: &mut impl GenericClient, st: &Stmts, cf: Cf, from: &[u8], end: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let rows = match end {
        Some(e) => c.query(&st.page_to, &[&cf_id(cf), &from, &e, &SCAN_PAGE]),
        None => c.query(&st.page, &[&cf_id(cf), &from, &SCAN_PAGE]),
    }
    .map_err(pg_err("scan metadata"))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Visit rows page by page, each page fetched whole by `fetch` before its rows are visited
/// (so memory stays at one page, and a visitor may read the store again meanwhile).
fn scan(start: &[u8], mut fetch: impl FnMut(&[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>, f: &mut Visit<'_>) -> Result<()> {
    let mut from = start.to_vec();
    loop {
        let rows = fetch(&from)?;
        let full = rows.len() as i64 == SCAN_PAGE;
        let next = rows.last().map(|(k, _)| [k.as_slice(), &[0]].concat());
        for (k, v) in rows {
            if !f(&k, &v)? {
                return Ok(());
            }
        }
        match next {
            Some(n) if full => from = n,
            _ => return Ok(()),
        }
    }
}

fn last_before(c: &mut impl GenericClient, st: &Stmts, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    let row = match end {
        Some(e) => c.query_opt(&st.last_before, &[&cf_id(cf), &e]),
        None => c.query_opt(&st.last, &[&cf_id(cf)]),
    }
    .map_err(pg_err("read metadata"))?;
    Ok(row.map(|r| r.get(0)))
}

impl KvRead for PgKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_waiting(|c, st| get(c, st, cf, key))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.with_waiting(|c, st| multi_get(c, st, cf, keys))
    }

    /// One statement of [`FETCH_KEYS`] keys (one round trip, one snapshot), the families'
    /// index scans joined by `UNION ALL`.
    fn get_many(&self, keys: &[(Cf, &[u8])]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found: HashMap<(Cf, Vec<u8>), Vec<u8>> = HashMap::new();
        for chunk in keys.chunks(FETCH_KEYS) {
            let chunk: Vec<(Cf, Vec<u8>)> = chunk.iter().map(|(cf, k)| (*cf, k.to_vec())).collect();
            let sql = select_sql(&chunk, &[]);
            let rows = self.with_waiting(|c, _| rows_of(c.simple_query(&sql).map_err(pg_err("read metadata"))?))?;
            found.extend(rows.into_iter().map(|r| (r.key, r.v)));
        }
        Ok(keys.iter().map(|(cf, k)| found.get(&(*cf, k.to_vec())).cloned()).collect())
    }

    /// One statement of [`FETCH_KEYS`] ranges (one round trip, one snapshot): an index scan
    /// of each, `LIMIT`ed, joined by `UNION ALL`.
    fn heads(&self, ranges: &[Head<'_>]) -> Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        let mut out = vec![Vec::new(); ranges.len()];
        for (n, chunk) in ranges.chunks(FETCH_KEYS).enumerate() {
            let sql = select_sql(&[], chunk);
            let rows = self.with_waiting(|c, _| rows_of(c.simple_query(&sql).map_err(pg_err("read metadata"))?))?;
            for r in rows {
                let i = r.range.ok_or_else(|| FsError::Meta("a range read answered a point row".into()))?;
                out.get_mut(n * FETCH_KEYS + i).ok_or_else(|| FsError::Meta(format!("a range read answered range {i}")))?.push((r.key.1, r.v));
            }
        }
        // `UNION ALL` keeps no order between or inside its parts' answers.
        for rows in &mut out {
            rows.sort();
        }
        Ok(out)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // Pages of one scan read one snapshot (a concurrent transaction's commit does not tear
        // a listing), and a visitor that reads the store again gets its own connection. A scan
        // waits for an unavailable database only until it has visited its first row (the
        // visitor must not see rows twice).
        let visited = std::cell::Cell::new(false);
        let mut f = |k: &[u8], v: &[u8]| {
            visited.set(true);
            f(k, v)
        };
        self.waiting(|| match self.scan_once(cf, start, end, &mut f) {
            Err(FsError::MetaUnavailable(why)) if visited.get() => Err(FsError::Meta(format!("{why} (during a scan)"))),
            other => other,
        })
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        self.with_waiting(|c, st| last_before(c, st, cf, end))
    }
}

impl PgKv {
    fn scan_once(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        self.with(|c, st| {
            // One page holds most ranges (and a visitor that stops at its first row needs no
            // more): one statement reads one snapshot, no transaction needed.
            let first = page(c, st, cf, start, end)?;
            if (first.len() as i64) < SCAN_PAGE {
                for (k, v) in first {
                    if !f(&k, &v)? {
                        break;
                    }
                }
                return Ok(());
            }
            // More pages: read them all in one snapshot, from the start again.
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").map_err(pg_err("begin a metadata scan"))?;
            let out = scan(start, |from| page(c, st, cf, from, end), f);
            match out {
                Ok(()) => c.batch_execute("COMMIT").map_err(pg_err("end a metadata scan")),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK");
                    Err(e)
                }
            }
        })
    }
}

impl Kv for PgKv {
    fn transact(&self, _sync: bool, body: &mut TxnBody<'_>) -> Result<()> {
        use std::hash::{BuildHasher, Hasher};
        let token = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let mut unanswered = None;
        self.waiting(|| retry_conflicts(|| self.attempt(body, token, &mut unanswered)))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// How a transaction starts: its `BEGIN` goes in one message with its first read (or its
/// writes, when it read nothing).
const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// Writes sent as one statement text with the commit up to this many rows (more: prepared
/// statements of arrays, then `COMMIT`).
const INLINE_WRITES: usize = 256;

/// Keys per read statement of [`Reader::fetch`].
const FETCH_KEYS: usize = 256;

/// Reads inside one database transaction (the base of its [`Overlay`]). Its point reads are
/// kept for the transaction: it reads one snapshot, and the overlay above answers for keys it
/// wrote, so a key read twice (a precondition, then the version it replaces) costs one query,
/// and a [`KvRead::prefetch`] of the keys a batch will read costs one query for all of them.
///
/// Round trips: `BEGIN` travels with the first read, and the writes, notifications and
/// `COMMIT` in one message ([`Reader::commit`]): a create is `BEGIN` + its reads, then its
/// writes + `COMMIT`, two round trips (plain SQL in the simple query protocol; `bytea`
/// values as `decode('HEX', 'hex')`).
struct Reader<'a> {
    c: RefCell<&'a mut Client>,
    st: &'a Stmts,
    cache: RefCell<HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>>,
    /// Ranges read ahead ([`KvRead::prefetch`], [`KvRead::heads`]): their first rows and
    /// whether those are all of the range; a scan of one starts from them.
    heads: RefCell<HashMap<(Cf, Vec<u8>, Vec<u8>), (Vec<(Vec<u8>, Vec<u8>)>, bool)>>,
    /// `BEGIN` was sent (so a failure must be rolled back).
    begun: Cell<bool>,
}

fn hex_lit(out: &mut String, b: &[u8]) {
    use std::fmt::Write;
    out.push_str("decode('");
    for x in b {
        let _ = write!(out, "{x:02x}");
    }
    out.push_str("', 'hex')");
}

/// A `bytea` in PostgreSQL's text output (`\x` then hex).
fn unhex(s: &str) -> Result<Vec<u8>> {
    let h = s.strip_prefix("\\x").ok_or_else(|| FsError::Meta(format!("bytea text {s:.20} is not hex")))?;
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| FsError::Meta("bad hex in a bytea".into())))
        .collect()
}

/// `SELECT cf, k, v, r` of `keys` (per family one index scan, `cf = N AND k IN (...)`; `r`
/// is -1) and of the first rows of `ranges` (one `LIMIT`ed index scan each; `r` is the
/// range's index), in one statement.
fn select_sql(keys: &[(Cf, Vec<u8>)], ranges: &[Head<'_>]) -> String {
    let mut by_cf: std::collections::BTreeMap<i16, Vec<&[u8]>> = std::collections::BTreeMap::new();
    for (cf, k) in keys {
        by_cf.entry(cf_id(*cf)).or_default().push(k);
    }
    let mut sql = String::new();
    for (cf, ks) in by_cf {
        if !sql.is_empty() {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!("SELECT cf, k, v, -1 FROM hybridfs_kv WHERE cf = {cf} AND k IN ("));
        for (i, k) in ks.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            hex_lit(&mut sql, k);
        }
        sql.push(')');
    }
    for (i, h) in ranges.iter().enumerate().filter(|(_, h)| h.limit > 0) {
        if !sql.is_empty() {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!("(SELECT cf, k, v, {i} FROM hybridfs_kv WHERE cf = {} AND k >= ", cf_id(h.cf)));
        hex_lit(&mut sql, h.start);
        sql.push_str(" AND k < ");
        hex_lit(&mut sql, h.end);
        sql.push_str(&format!(" ORDER BY k LIMIT {})", h.limit));
    }
    if sql.is_empty() {
        // Nothing asked: a statement that answers nothing (`BEGIN` may travel with it).
        sql.push_str("SELECT 1 WHERE false");
    }
    sql
}

/// A row of a [`select_sql`] answer: its family and key, its value, and the range it was
/// read for (None: a point read).
struct Fetched {
    key: (Cf, Vec<u8>),
    v: Vec<u8>,
    range: Option<usize>,
}

/// The rows of a [`select_sql`] answer.
fn rows_of(msgs: Vec<postgres::SimpleQueryMessage>) -> Result<Vec<Fetched>> {
    let mut out = Vec::new();
    for m in msgs {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            let field = |i| r.get(i).ok_or_else(|| FsError::Meta("a metadata row has a NULL".into()));
            let cf: usize = field(0)?.parse().map_err(|_| FsError::Meta("bad cf in a metadata row".into()))?;
            let cf = *Cf::ALL.get(cf).ok_or_else(|| FsError::Meta(format!("unknown cf {cf} in a metadata row")))?;
            let range: i64 = field(3)?.parse().map_err(|_| FsError::Meta("bad range tag in a metadata row".into()))?;
            out.push(Fetched { key: (cf, unhex(field(1)?)?), v: unhex(field(2)?)?, range: usize::try_from(range).ok() });
        }
    }
    Ok(out)
}

/// A transaction's writes as statement text: one upsert, one delete per family.
fn write_sql(ops: &[KvOp], token: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    let mut ins = String::new();
    if let Some(token) = token {
        ins.push_str(&format!("INSERT INTO hybridfs_kv (cf, k, v) VALUES ({TOKEN_CF}, "));
        hex_lit(&mut ins, &token.to_be_bytes());
        ins.push_str(", ");
        hex_lit(&mut ins, &unix_secs().to_be_bytes());
        ins.push(')');
    }
    let mut dels: std::collections::BTreeMap<i16, String> = std::collections::BTreeMap::new();
    for op in ops {
        match op {
            KvOp::Put(cf, k, v) => {
                ins.push_str(if ins.is_empty() { "INSERT INTO hybridfs_kv (cf, k, v) VALUES (" } else { ", (" });
                ins.push_str(&format!("{}, ", cf_id(*cf)));
                hex_lit(&mut ins, k);
                ins.push_str(", ");
                hex_lit(&mut ins, v);
                ins.push(')');
            }
            KvOp::Del(cf, k) => {
                let d = dels.entry(cf_id(*cf)).or_insert_with(|| format!("DELETE FROM hybridfs_kv WHERE cf = {} AND k IN (", cf_id(*cf)));
                if !d.ends_with('(') {
                    d.push(',');
                }
                hex_lit(d, k);
            }
        }
    }
    if !ins.is_empty() {
        ins.push_str(" ON CONFLICT (cf, k) DO UPDATE SET v = EXCLUDED.v");
        out.push(ins);
    }
    out.extend(dels.into_values().map(|d| d + ")"));
    out
}

impl Reader<'_> {
    fn begin(&self) -> Result<()> {
        if !self.begun.replace(true) {
            self.c.borrow_mut().batch_execute(BEGIN).map_err(pg_err("begin a metadata transaction"))?;
        }
        Ok(())
    }

    /// Read the keys not read yet into the cache (found or not), and the first rows of the
    /// ranges not read that far yet: [`FETCH_KEYS`] keys and as many ranges a statement, the
    /// first with the transaction's `BEGIN`.
    fn fetch(&self, keys: &[(Cf, &[u8])], ranges: &[Head<'_>]) -> Result<()> {
        let mut missing: Vec<(Cf, Vec<u8>)> = {
            let cache = self.cache.borrow();
            keys.iter().filter(|(cf, k)| !cache.contains_key(&(*cf, k.to_vec()))).map(|(cf, k)| (*cf, k.to_vec())).collect()
        };
        missing.sort();
        missing.dedup();
        let short: Vec<Head<'_>> = {
            let heads = self.heads.borrow();
            ranges
                .iter()
                .copied()
                .filter(|h| match heads.get(&(h.cf, h.start.to_vec(), h.end.to_vec())) {
                    Some((rows, complete)) => !complete && rows.len() < h.limit,
                    None => true,
                })
                .collect()
        };
        let (mut keys, mut ranges) = (&missing[..], &short[..]);
        while !keys.is_empty() || !ranges.is_empty() {
            let (k, r) = (keys.len().min(FETCH_KEYS), ranges.len().min(FETCH_KEYS));
            let (now_keys, now_ranges) = (&keys[..k], &ranges[..r]);
            (keys, ranges) = (&keys[k..], &ranges[r..]);
            let mut sql = select_sql(now_keys, now_ranges);
            if !self.begun.replace(true) {
                sql = format!("{BEGIN}; {sql}");
            }
            let msgs = self.c.borrow_mut().simple_query(&sql).map_err(pg_err("read metadata"))?;
            let mut found: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); now_ranges.len()];
            let mut cache = self.cache.borrow_mut();
            for key in now_keys {
                cache.insert(key.clone(), None);
            }
            for row in rows_of(msgs)? {
                match row.range {
                    None => {
                        cache.insert(row.key, Some(row.v));
                    }
                    Some(i) => found.get_mut(i).ok_or_else(|| FsError::Meta(format!("a range read answered range {i}")))?.push((row.key.1, row.v)),
                }
            }
            let mut heads = self.heads.borrow_mut();
            for (h, mut rows) in now_ranges.iter().zip(found) {
                rows.sort();
                let complete = rows.len() < h.limit;
                heads.insert((h.cf, h.start.to_vec(), h.end.to_vec()), (rows, complete));
            }
        }
        Ok(())
    }

    /// Send the writes, the change notifications and `COMMIT`: one message when the writes
    /// are few (with `BEGIN` when nothing was read), else prepared statements of arrays.
    fn commit(&self, ops: Vec<KvOp>, notes: Vec<String>, token: Option<u64>) -> Result<()> {
        if ops.is_empty() && !self.begun.get() {
            return Ok(());
        }
        let bytes: usize = ops.iter().map(|op| match op {
            KvOp::Put(_, k, v) => k.len() + v.len(),
            KvOp::Del(_, k) => k.len(),
        }).sum();
        let mut c = self.c.borrow_mut();
        if ops.len() <= INLINE_WRITES && bytes <= 1 << 20 {
            let mut stmts = Vec::new();
            if !self.begun.replace(true) {
                stmts.push(BEGIN.to_string());
            }
            stmts.extend(write_sql(&ops, token));
            // Payloads are hex, `;`, `,` and `:` only (see `change_notes`): no quoting needed.
            stmts.extend(notes.iter().map(|n| format!("SELECT pg_notify('{CHANNEL}', '{n}')")));
            stmts.push("COMMIT".into());
            c.simple_query(&stmts.join("; ")).map_err(pg_err("commit a metadata transaction"))?;
            return Ok(());
        }
        drop(c);
        self.begin()?;
        let mut c = self.c.borrow_mut();
        write(&mut **c, self.st, ops, token)?;
        for note in notes {
            c.execute(&self.st.notify, &[&CHANNEL, &note]).map_err(pg_err("notify a metadata change"))?;
        }
        c.batch_execute("COMMIT").map_err(pg_err("commit a metadata transaction"))
    }
}

impl KvRead for Reader<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.cache.borrow().get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        self.fetch(&[(cf, key)], &[])?;
        Ok(self.cache.borrow().get(&(cf, key.to_vec())).cloned().flatten())
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let asked: Vec<(Cf, &[u8])> = keys.iter().map(|k| (cf, *k)).collect();
        self.fetch(&asked, &[])?;
        let cache = self.cache.borrow();
        Ok(keys.iter().map(|k| cache.get(&(cf, k.to_vec())).cloned().flatten()).collect())
    }

    fn prefetch(&self, keys: &[(Cf, &[u8])], ranges: &[Head<'_>]) -> Result<()> {
        self.fetch(keys, ranges)
    }

    fn heads(&self, ranges: &[Head<'_>]) -> Result<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
        self.fetch(&[], ranges)?;
        let heads = self.heads.borrow();
        ranges
            .iter()
            .map(|h| match heads.get(&(h.cf, h.start.to_vec(), h.end.to_vec())) {
                Some((rows, _)) => Ok(rows.iter().take(h.limit).cloned().collect()),
                None => Err(FsError::Meta("a range read ahead is missing".into())),
            })
            .collect()
    }

    fn get_many(&self, keys: &[(Cf, &[u8])]) -> Result<Vec<Option<Vec<u8>>>> {
        self.fetch(keys, &[])?;
        let cache = self.cache.borrow();
        Ok(keys.iter().map(|(cf, k)| cache.get(&(*cf, k.to_vec())).cloned().flatten()).collect())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // A range read ahead: its first rows from here, the rest (if any) from the database.
        let mut start = start.to_vec();
        if let Some(e) = end {
            let ahead = self.heads.borrow().get(&(cf, start.clone(), e.to_vec())).cloned();
            if let Some((rows, complete)) = ahead {
                for (k, v) in &rows {
                    if !f(k, v)? {
                        return Ok(());
                    }
                }
                if complete {
                    return Ok(());
                }
                if let Some((k, _)) = rows.last() {
                    start = [k.as_slice(), &[0]].concat();
                }
            }
        }
        self.begin()?;
        // Each page is fetched (and the connection's borrow released) before it is visited.
        scan(&start, |from| page(&mut **self.c.borrow_mut(), self.st, cf, from, end), f)
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        self.begin()?;
        last_before(&mut **self.c.borrow_mut(), self.st, cf, end)
    }
}

/// A pooled connection with its statements, prepared once when it connects (each query is
/// then one round trip, not two: parsing a statement anew per query doubled them).
struct Conn {
    c: Client,
    st: Stmts,
}

struct Stmts {
    get: Statement,
    multi_get: Statement,
    page: Statement,
    page_to: Statement,
    last: Statement,
    last_before: Statement,
    upsert: Statement,
    delete: Statement,
    notify: Statement,
}

impl Conn {
    fn new(mut c: Client) -> Result<Conn> {
        let mut prep = |sql: &str| c.prepare(sql).map_err(pg_err("prepare a metadata statement"));
        let st = Stmts {
            get: prep("SELECT v FROM hybridfs_kv WHERE cf = $1 AND k = $2")?,
            multi_get: prep("SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k = ANY($2)")?,
            page: prep("SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k >= $2 ORDER BY k LIMIT $3")?,
            page_to: prep("SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4")?,
            last: prep("SELECT k FROM hybridfs_kv WHERE cf = $1 ORDER BY k DESC LIMIT 1")?,
            last_before: prep("SELECT k FROM hybridfs_kv WHERE cf = $1 AND k < $2 ORDER BY k DESC LIMIT 1")?,
            upsert: prep(
                "INSERT INTO hybridfs_kv (cf, k, v) SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[])
                 ON CONFLICT (cf, k) DO UPDATE SET v = EXCLUDED.v",
            )?,
            delete: prep("DELETE FROM hybridfs_kv WHERE cf = $1 AND k = ANY($2)")?,
            notify: prep("SELECT pg_notify($1, $2)")?,
        };
        Ok(Conn { c, st })
    }
}

pub mod testserver;

#[cfg(test)]
mod note_tests {
    use super::*;

    #[test]
    fn change_notes_name_inode_and_entry_rows_and_skip_their_sender() {
        let mut ops = vec![KvOp::Put(Cf::Inodes, 7u64.to_be_bytes().to_vec(), vec![1]), KvOp::Put(Cf::Refs, vec![9], vec![])];
        let entry = [&5u64.to_be_bytes()[..], b"a,b;c:d"].concat();
        ops.push(KvOp::Del(Cf::Dentries, entry.clone()));
        ops.push(KvOp::Put(Cf::Snapshots, b"nightly".to_vec(), vec![2]));
        let notes = change_notes(42, &ops);
        assert_eq!(notes.len(), 1);
        let rows = parse_note(1, &notes[0]);
        assert_eq!(rows, vec![(Cf::Inodes, 7u64.to_be_bytes().to_vec()), (Cf::Dentries, entry), (Cf::Snapshots, b"nightly".to_vec())]);
        assert!(parse_note(42, &notes[0]).is_empty(), "a sender's own notes are skipped");
        let many: Vec<KvOp> = (0..2000u64).map(|i| KvOp::Put(Cf::Inodes, i.to_be_bytes().to_vec(), vec![])).collect();
        let notes = change_notes(42, &many);
        assert!(notes.len() > 1 && notes.iter().all(|n| n.len() <= NOTE_BYTES));
        assert_eq!(notes.iter().map(|n| parse_note(1, n).len()).sum::<usize>(), 2000);
    }
}
