//! Shared volumes (issue 15): a real PostgreSQL ([`PgServer`], initdb in the test's scratch,
//! loopback port) holding one volume's metadata, a real SeaweedFS as its store, and the volume
//! mounted twice on this machine through two `HYBRIDFS_HOME`s, as two hosts would.
//!
//! Drop order tears down the mounts first, then the store and the database.

use std::time::Duration;

use hybridfs_cloud::testserver::SeaweedServer;
use hybridfs_meta_pg::testserver::PgServer;

use crate::{fail_loudly, TestVolume};

/// Two hosts of one shared volume. Fields drop in this order: hosts, then servers.
pub struct Cluster {
    pub a: TestVolume,
    pub b: TestVolume,
    /// The environment a mount or command needs to reach the store.
    pub env: Vec<(&'static str, String)>,
    /// The volume's database and store URLs.
    pub meta: String,
    pub store: String,
    pub weed: SeaweedServer,
    pub pg: PgServer,
    /// The database's directory (removed after the server stopped).
    _scratch: tempfile::TempDir,
}

impl Cluster {
    /// Volume `name` formatted by host A (`format --meta --store`), joined by host B
    /// (`format --meta --join`); both mounted when `mount`, with `mount_args` on each.
    pub fn start(name: &str, mount: bool, mount_args: &[&str]) -> Cluster {
        let watchdog = Duration::from_secs(40 * 60);
        let a = TestVolume::builder().name(name).unformatted().mount_args(mount_args).watchdog(watchdog).build();
        let b = TestVolume::builder().name(name).unformatted().mount_args(mount_args).watchdog(watchdog).build();
        let scratch = tempfile::Builder::new().prefix("hybridfs-test-pg-").tempdir().expect("scratch dir");
        let pg = PgServer::start_in(scratch.path()).unwrap_or_else(|e| fail_loudly(&format!("shared volumes need PostgreSQL: {e}")));
        let weed = SeaweedServer::start().unwrap_or_else(|e| fail_loudly(&format!("shared volumes need an S3 server: {e}")));
        weed.store("shared", name).unwrap_or_else(|e| panic!("create bucket: {e}"));
        let meta = pg.database("vol").unwrap_or_else(|e| panic!("create database: {e}"));
        let store = format!("s3://shared/{name}");
        let env = weed.env();
        let mut c = Cluster { a, b, env, meta, store, weed, pg, _scratch: scratch };
        c.a.ctl(&["format", name, "--meta", &c.meta, "--store", &c.store, "--no-check"]).assert_success();
        c.b.ctl(&["format", name, "--meta", &c.meta, "--join"]).assert_success();
        if mount {
            c.mount_both();
        }
        c
    }

    pub fn env_refs(&self) -> Vec<(&'static str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    pub fn mount_both(&mut self) {
        let env: Vec<(&'static str, String)> = self.env.clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.a.mount_env(&env);
        self.b.mount_env(&env);
    }
}
