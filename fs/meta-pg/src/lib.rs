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
//! in two statements (one upsert, one delete, each of arrays), then `COMMIT`. A serialization
//! failure or deadlock, on any statement or the commit, is [`FsError::MetaConflict`], and the
//! whole transaction runs again ([`retry_conflicts`]). So two hosts incrementing one reference
//! count, or creating one name, end with one result, never a lost update.
//!
//! A lost connection is [`FsError::MetaUnavailable`]; the pooled connection is dropped and the
//! next use connects again. `sync` is a no-op: a committed transaction is durable
//! (`synchronous_commit` on, the PostgreSQL default).

use hybridfs_core::error::{FsError, Result};
use hybridfs_core::kv::{retry_conflicts, Cf, Kv, KvOp, KvRead, Overlay, TxnBody, Visit};
use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, IsolationLevel, NoTls};
use std::cell::RefCell;

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
    url: String,
    idle: Mutex<Vec<Client>>,
}

fn cf_id(cf: Cf) -> i16 {
    Cf::ALL.iter().position(|c| *c == cf).expect("every Cf is in Cf::ALL") as i16
}

/// An engine error as core's typed error: conflicts and lost connections are transient.
fn pg_err(what: &str) -> impl Fn(postgres::Error) -> FsError + '_ {
    move |e| match e.code() {
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
            FsError::MetaConflict(format!("{what}: {e}"))
        }
        Some(c) if *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CANNOT_CONNECT_NOW => {
            FsError::MetaUnavailable(format!("{what}: {e}"))
        }
        None if e.is_closed() || e.as_db_error().is_none() => FsError::MetaUnavailable(format!("{what}: {e}")),
        _ => FsError::Meta(format!("{what}: {e}")),
    }
}

impl PgKv {
    /// Connect to `url` (`postgres://USER@HOST:PORT/DB`, libpq syntax also accepted) and create
    /// the table if it is not there.
    pub fn connect(url: &str) -> Result<PgKv> {
        let kv = PgKv { url: url.to_string(), idle: Mutex::new(Vec::new()) };
        let mut c = kv.client()?;
        c.batch_execute(SCHEMA).map_err(pg_err("create the metadata table"))?;
        kv.put_back(c);
        Ok(kv)
    }

    fn client(&self) -> Result<Client> {
        if let Some(c) = self.idle.lock().pop() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        Client::connect(&self.url, NoTls).map_err(pg_err("connect to the metadata database"))
    }

    fn put_back(&self, c: Client) {
        let mut idle = self.idle.lock();
        if !c.is_closed() && idle.len() < POOL {
            idle.push(c);
        }
    }

    /// Run `f` on a pooled connection (returned to the pool unless it broke).
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let out = f(&mut c);
        self.put_back(c);
        out
    }

    /// One attempt at a transaction; a conflict comes back as [`FsError::MetaConflict`].
    fn attempt(&self, body: &mut TxnBody<'_>) -> Result<()> {
        let mut client = self.client()?;
        let result = (|| {
            let t = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .map_err(pg_err("begin a metadata transaction"))?;
            let reader = Reader(RefCell::new(t));
            let mut overlay = Overlay::new(&reader);
            body(&mut overlay)?;
            let (ops, hooks) = overlay.finish();
            let mut t = reader.0.into_inner();
            write(&mut t, ops)?;
            t.commit().map_err(pg_err("commit a metadata transaction"))?;
            Ok(hooks)
        })();
        self.put_back(client);
        for hook in result? {
            hook();
        }
        Ok(())
    }
}

/// Send a transaction's writes: every put in one upsert, every delete in one statement.
fn write(t: &mut impl GenericClient, ops: Vec<KvOp>) -> Result<()> {
    let (mut pcf, mut pk, mut pv) = (Vec::new(), Vec::new(), Vec::new());
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
        t.execute(
            "INSERT INTO hybridfs_kv (cf, k, v) SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[])
             ON CONFLICT (cf, k) DO UPDATE SET v = EXCLUDED.v",
            &[&pcf, &pk, &pv],
        )
        .map_err(pg_err("write metadata"))?;
    }
    if !dk.is_empty() {
        t.execute(
            "DELETE FROM hybridfs_kv WHERE (cf, k) IN (SELECT * FROM unnest($1::smallint[], $2::bytea[]))",
            &[&dcf, &dk],
        )
        .map_err(pg_err("delete metadata"))?;
    }
    Ok(())
}

fn get(c: &mut impl GenericClient, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let row = c
        .query_opt("SELECT v FROM hybridfs_kv WHERE cf = $1 AND k = $2", &[&cf_id(cf), &key])
        .map_err(pg_err("read metadata"))?;
    Ok(row.map(|r| r.get(0)))
}

fn multi_get(c: &mut impl GenericClient, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
    let rows = c
        .query("SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k = ANY($2)", &[&cf_id(cf), &keys])
        .map_err(pg_err("read metadata"))?;
    let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(keys.iter().map(|k| found.remove(*k)).collect())
}

/// One page of a scan: up to [`SCAN_PAGE`] rows of `cf` from `from` (inclusive) to `end`.
fn page(c: &mut impl GenericClient, cf: Cf, from: &[u8], end: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let rows = match end {
        Some(e) => c.query(
            "SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4",
            &[&cf_id(cf), &from, &e, &SCAN_PAGE],
        ),
        None => c.query(
            "SELECT k, v FROM hybridfs_kv WHERE cf = $1 AND k >= $2 ORDER BY k LIMIT $3",
            &[&cf_id(cf), &from, &SCAN_PAGE],
        ),
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

fn last_before(c: &mut impl GenericClient, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    let row = match end {
        Some(e) => c.query_opt("SELECT k FROM hybridfs_kv WHERE cf = $1 AND k < $2 ORDER BY k DESC LIMIT 1", &[&cf_id(cf), &e]),
        None => c.query_opt("SELECT k FROM hybridfs_kv WHERE cf = $1 ORDER BY k DESC LIMIT 1", &[&cf_id(cf)]),
    }
    .map_err(pg_err("read metadata"))?;
    Ok(row.map(|r| r.get(0)))
}

impl KvRead for PgKv {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|c| get(c, cf, key))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.with(|c| multi_get(c, cf, keys))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // Pages of one scan read one snapshot (a concurrent transaction's commit does not tear
        // a listing), and a visitor that reads the store again gets its own connection.
        self.with(|c| {
            let mut t = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg_err("begin a metadata scan"))?;
            scan(start, |from| page(&mut t, cf, from, end), f)?;
            t.commit().map_err(pg_err("end a metadata scan"))
        })
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        self.with(|c| last_before(c, cf, end))
    }
}

impl Kv for PgKv {
    fn transact(&self, _sync: bool, body: &mut TxnBody<'_>) -> Result<()> {
        retry_conflicts(|| self.attempt(body))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Reads inside one database transaction (the base of its [`Overlay`]).
struct Reader<'a>(RefCell<postgres::Transaction<'a>>);

impl KvRead for Reader<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        get(&mut *self.0.borrow_mut(), cf, key)
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        multi_get(&mut *self.0.borrow_mut(), cf, keys)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>, f: &mut Visit<'_>) -> Result<()> {
        // Each page is fetched (and the transaction's borrow released) before it is visited.
        scan(start, |from| page(&mut *self.0.borrow_mut(), cf, from, end), f)
    }

    fn last_before(&self, cf: Cf, end: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        last_before(&mut *self.0.borrow_mut(), cf, end)
    }
}

pub mod testserver;
