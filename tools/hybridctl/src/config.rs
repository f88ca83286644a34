//! The one config file of hybridctl and of the mounts it starts:
//! `/etc/hybridfs/hybridfs.toml` (or `--config FILE`, or `$HYBRIDFS_CONFIG`), then the
//! environment, then flags; each later one wins. Every key, its variable, flag and default are
//! in [`KEYS`] (and doc/CONFIGURATION.md, which a test keeps in step).
//!
//! Checked once at start, before anything runs: a value of the wrong shape, a bad size, an
//! unknown key, in the file or in a variable, stops every command with one line naming the
//! file, the line and the key (`hybridfs.toml:7: mount.threads: ...`), the way the agent's
//! config does (`hybridfs-config` maps toml's spans back to keys for both). A missing default file is no
//! error: defaults, environment and flags apply.

use hybridfs_config::{self as locate, ConfigError};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const DEFAULT_FILE: &str = "/etc/hybridfs/hybridfs.toml";
pub const FILE_ENV: &str = "HYBRIDFS_CONFIG";

/// One key: its dotted name, the variables that set it (the first one set wins), its flag, its
/// default as shown, and whether its value is a secret (`config show` masks it).
pub struct Key {
    pub name: &'static str,
    pub env: &'static [&'static str],
    pub flag: Option<&'static str>,
    pub default: &'static str,
    pub secret: bool,
}

const fn key(name: &'static str, env: &'static [&'static str], flag: Option<&'static str>, default: &'static str) -> Key {
    Key { name, env, flag, default, secret: false }
}

/// Every key, in the order `config show` lists them.
pub const KEYS: &[Key] = &[
    key("home", &["HYBRIDFS_HOME"], Some("--home"), "/var/lib/hybridfs"),
    key("log.level", &["HYBRIDFS_LOG"], Some("--log-level"), "info for a mount, warn otherwise"),
    key("log.format", &["HYBRIDFS_LOG_FORMAT"], Some("--log-format"), "text"),
    key("mount.threads", &["HYBRIDFS_MOUNT_THREADS"], Some("--threads"), "4"),
    key("mount.writeback_cache", &["HYBRIDFS_MOUNT_WRITEBACK_CACHE"], Some("--writeback-cache"), "false"),
    key("mount.passthrough_writes", &["HYBRIDFS_MOUNT_PASSTHROUGH_WRITES"], Some("--passthrough-writes"), "true"),
    key("mount.seal_delay", &["HYBRIDFS_MOUNT_SEAL_DELAY"], Some("--seal-delay"), "30s"),
    key("mount.read_timeout", &["HYBRIDFS_MOUNT_READ_TIMEOUT"], Some("--read-timeout"), "the volume's read_timeout_secs, else 30s"),
    key("mount.metrics_addr", &["HYBRIDFS_MOUNT_METRICS_ADDR"], Some("--metrics-addr"), "none (no metrics server)"),
    key("mount.dashboard", &["HYBRIDFS_MOUNT_DASHBOARD"], Some("--dashboard"), "false"),
    key("mount.blocks_to_store", &["HYBRIDFS_MOUNT_BLOCKS_TO_STORE"], Some("--blocks-to-store"), "the volume's blocks_to_store, else on-fsync for a shared volume, later for others"),
    key("mount.host_lease", &["HYBRIDFS_MOUNT_HOST_LEASE", "HYBRIDFS_HOST_LEASE_SECS"], Some("--host-lease"), "60s"),
    key("format.block_size", &["HYBRIDFS_FORMAT_BLOCK_SIZE"], Some("--block-size"), "1M"),
    key("format.store", &["HYBRIDFS_FORMAT_STORE"], Some("--store"), "file://HOME/store"),
    key("format.encryption_key_file", &["HYBRIDFS_FORMAT_ENCRYPTION_KEY_FILE"], Some("--encryption-key-file"), "none (not encrypted)"),
    key("clone.cache", &["HYBRIDFS_CLONE_CACHE"], Some("--cache"), "unlimited"),
    key("clone.encryption_key_file", &["HYBRIDFS_CLONE_ENCRYPTION_KEY_FILE"], Some("--encryption-key-file"), "none"),
    key("agent.address", &["HYBRID_AGENT"], Some("--agent"), crate::agentcmd::DEFAULT_ADDR),
    key("agent.token_file", &["HYBRID_AGENT_TOKEN_FILE"], Some("--token-file"), crate::agentcmd::DEFAULT_TOKEN_FILE),
    key("s3.endpoint", &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], None, "AWS's endpoint for the region"),
    key("s3.region", &["AWS_REGION", "AWS_DEFAULT_REGION"], None, "us-east-1"),
    key("s3.access_key_id", &["AWS_ACCESS_KEY_ID"], None, "the AWS credential chain"),
    Key { secret: true, ..key("s3.secret_access_key", &["AWS_SECRET_ACCESS_KEY"], None, "the AWS credential chain") },
];

fn key_def(name: &str) -> &'static Key {
    KEYS.iter().find(|k| k.name == name).expect("every resolved key is in KEYS")
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One row of `config show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub key: &'static str,
    pub value: String,
    pub source: String,
}

/// A value as written in the file, a variable or a flag: parsed and checked from its text.
pub trait Value: Sized {
    fn parse(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

impl Value for PathBuf {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty path".into());
        }
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Value for String {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty value".into());
        }
        Ok(s.to_string())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl Value for bool {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("`{s}` is not true or false")),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Value for SocketAddr {
    fn parse(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| format!("`{s}` is not an address like 127.0.0.1:9580"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// FUSE session threads: 1 to 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads(pub usize);

impl Value for Threads {
    fn parse(s: &str) -> Result<Self, String> {
        match s.parse::<usize>() {
            Ok(n @ 1..=256) => Ok(Threads(n)),
            _ => Err(format!("`{s}` is not a number of threads from 1 to 256")),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
}

/// Seconds, written `30` or with a unit: `90s`, `10m`, `2h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secs(pub u64);

impl Value for Secs {
    fn parse(s: &str) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => 0,
        };
        match num.parse::<u64>() {
            Ok(n) if mult > 0 => Ok(Secs(n.saturating_mul(mult))),
            _ => Err(format!("`{s}` is not a duration (seconds, or like 90s, 10m, 2h)")),
        }
    }
    fn show(&self) -> String {
        format!("{}s", self.0)
    }
}

/// A block size: a power of two from 64K to 64M (suffix K or M); kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSize(pub String);

impl Value for BlockSize {
    fn parse(s: &str) -> Result<Self, String> {
        match hybridfs_node::home::parse_size(s) {
            Some(b) if b.is_power_of_two() && (64 << 10..=64 << 20).contains(&b) => Ok(BlockSize(s.to_string())),
            _ => Err(format!("`{s}` is not a block size (a power of two from 64K to 64M, suffix K or M)")),
        }
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// A clone's cache limit: at least 16M (suffix K, M or G).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSize {
    pub bytes: u64,
    pub text: String,
}

impl Value for CacheSize {
    fn parse(s: &str) -> Result<Self, String> {
        match hybridfs_node::home::parse_size(s) {
            Some(bytes) if bytes >= 16 << 20 => Ok(CacheSize { bytes, text: s.to_string() }),
            _ => Err(format!("`{s}` is not a cache size (a number with K, M or G, at least 16M)")),
        }
    }
    fn show(&self) -> String {
        self.text.clone()
    }
}

/// An object store URL: `file:///PATH` or `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl(pub String);

impl Value for StoreUrl {
    fn parse(s: &str) -> Result<Self, String> {
        let ok = s.strip_prefix("file://").is_some_and(|p| p.starts_with('/')) || s.strip_prefix("s3://").is_some_and(|b| !b.is_empty());
        if !ok {
            return Err(format!("`{s}` is not a store URL (file:///PATH or s3://BUCKET/PREFIX)"));
        }
        Ok(StoreUrl(s.to_string()))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// The hybrid-agent controller's API: `unix:/PATH` or `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAddr(pub String);

impl Value for AgentAddr {
    fn parse(s: &str) -> Result<Self, String> {
        let tcp = s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !(s.starts_with("unix:/") || tcp) {
            return Err(format!("`{s}` is not an agent address (unix:/PATH or HOST:PORT)"));
        }
        Ok(AgentAddr(s.to_string()))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

/// A `tracing` filter: `info`, `debug`, `warn,hybridfs_sync=debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevel(pub String);

impl Value for LogLevel {
    fn parse(s: &str) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("`{s}` is not a log filter like info or warn,hybridfs_sync=debug ({e})"))?;
        Ok(LogLevel(s.to_string()))
    }
    fn show(&self) -> String {
        self.0.clone()
    }
}

pub use hybridfs_node::BlocksToStore;

impl Value for BlocksToStore {
    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
    }
    fn show(&self) -> String {
        self.as_str().into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Value for LogFormat {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not a log format (text or json)")),
        }
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        }
    }
}

/// A value in the file: a string, number or boolean, checked by [`Value::parse`] while it is
/// deserialized, so that toml's error points at it.
pub struct V<T>(T);

impl<'de, T: Value> Deserialize<'de> for V<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_bool<E>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        let text = d.deserialize_any(Text)?;
        T::parse(&text).map(V).map_err(serde::de::Error::custom)
    }
}

type F<T> = Option<Spanned<V<T>>>;

/// The file, as written: every key optional, no other key allowed.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    home: F<PathBuf>,
    #[serde(default)]
    log: LogKeys,
    #[serde(default)]
    mount: MountKeys,
    #[serde(default)]
    format: FormatKeys,
    #[serde(default)]
    clone: CloneKeys,
    #[serde(default)]
    agent: AgentKeys,
    #[serde(default)]
    s3: S3Keys,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentKeys {
    address: F<AgentAddr>,
    token_file: F<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogKeys {
    level: F<LogLevel>,
    format: F<LogFormat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MountKeys {
    threads: F<Threads>,
    writeback_cache: F<bool>,
    passthrough_writes: F<bool>,
    seal_delay: F<Secs>,
    read_timeout: F<Secs>,
    metrics_addr: F<SocketAddr>,
    dashboard: F<bool>,
    blocks_to_store: F<BlocksToStore>,
    host_lease: F<Secs>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FormatKeys {
    block_size: F<BlockSize>,
    store: F<StoreUrl>,
    encryption_key_file: F<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloneKeys {
    cache: F<CacheSize>,
    encryption_key_file: F<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct S3Keys {
    endpoint: F<String>,
    region: F<String>,
    access_key_id: F<String>,
    secret_access_key: F<String>,
}

/// Values given as flags (parsed by clap with the same [`Value::parse`]).
#[derive(Default, Clone, Debug)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub threads: Option<Threads>,
    pub writeback_cache: Option<bool>,
    pub passthrough_writes: Option<bool>,
    pub seal_delay: Option<Secs>,
    pub read_timeout: Option<Secs>,
    pub metrics_addr: Option<SocketAddr>,
    pub dashboard: Option<bool>,
    pub blocks_to_store: Option<BlocksToStore>,
    pub host_lease: Option<Secs>,
    pub block_size: Option<BlockSize>,
    pub store: Option<StoreUrl>,
    pub format_key_file: Option<PathBuf>,
    pub cache: Option<CacheSize>,
    pub clone_key_file: Option<PathBuf>,
    pub agent: Option<AgentAddr>,
    pub agent_token_file: Option<PathBuf>,
}

/// The effective settings, and where each came from.
#[derive(Debug)]
pub struct Config {
    /// The file read (none: the default file does not exist).
    pub file: Option<PathBuf>,
    pub home: PathBuf,
    /// None: the command's own default (info for a mount, warn otherwise).
    pub log_level: Option<LogLevel>,
    pub log_format: LogFormat,
    pub threads: usize,
    pub writeback_cache: bool,
    /// Writes of files with no sealed block by kernel passthrough (not with `writeback_cache`).
    pub passthrough_writes: bool,
    pub seal_delay: u64,
    pub read_timeout: Option<u64>,
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the mount's web page on `metrics_addr` (which it needs).
    pub dashboard: bool,
    /// None: the volume's own `blocks_to_store`, else later.
    pub blocks_to_store: Option<BlocksToStore>,
    /// A shared volume's host lease, seconds (None: 60).
    pub host_lease: Option<u64>,
    pub block_size: String,
    pub store: Option<String>,
    pub format_key_file: Option<PathBuf>,
    pub cache: Option<u64>,
    pub clone_key_file: Option<PathBuf>,
    /// How `hybridctl nodes|cost` reach the hybrid-agent controller.
    pub agent: String,
    pub agent_token_file: PathBuf,
    /// Values the file gives to variables other code reads (the AWS SDK's): set in this
    /// process's environment by [`Config::export`].
    pub exports: Vec<(&'static str, String)>,
    pub rows: Vec<Row>,
}

/// A config that cannot be used: a file error names file, line and key; a variable's names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    File(#[from] ConfigError),
    #[error("environment {var}: {key}: {message}")]
    Env { var: &'static str, key: &'static str, message: String },
    /// Values that are fine alone but not together; `origin` says where the key was set
    /// (`FILE:LINE`, `env VAR`, `flag --FLAG`).
    #[error("{origin}: {key}: {message}")]
    Conflict { origin: String, key: &'static str, message: String },
}

/// Picks the values: file < environment < flags.
struct Resolver<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    rows: Vec<Row>,
    exports: Vec<(&'static str, String)>,
}

impl Resolver<'_> {
    fn get<T: Value>(&mut self, name: &'static str, file: F<T>, flag: Option<T>) -> Result<Option<T>, Error> {
        let key = key_def(name);
        let env = key.env.iter().find_map(|var| (self.env)(var).filter(|v| !v.is_empty()).map(|v| (*var, v)));
        let (value, source) = if let Some(v) = flag {
            (Some(v), Source::Flag(key.flag.unwrap_or("-")))
        } else if let Some((var, text)) = env {
            let v = T::parse(&text).map_err(|message| Error::Env { var, key: name, message })?;
            (Some(v), Source::Env(var))
        } else if let Some(s) = file {
            let line = locate::line_of(self.text, s.span().start);
            let v = s.into_inner().0;
            // Values for variables the AWS SDK reads: handed on through the environment.
            if name.starts_with("s3.") {
                self.exports.push((key.env[0], v.show()));
            }
            (Some(v), Source::File { path: self.path.to_path_buf(), line })
        } else {
            (None, Source::Default)
        };
        let shown = match &value {
            Some(_) if key.secret => "******".to_string(),
            Some(v) => v.show(),
            None => key.default.to_string(),
        };
        self.rows.push(Row { key: name, value: shown, source: source.to_string() });
        Ok(value)
    }
}

/// Which file to read: `--config`, else `$HYBRIDFS_CONFIG`, else the default one; and whether
/// it must exist (only the default one may be missing).
pub fn file_to_read(flag: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> (PathBuf, bool) {
    match (flag, env(FILE_ENV).filter(|v| !v.is_empty())) {
        (Some(p), _) => (p.to_path_buf(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(DEFAULT_FILE), false),
    }
}

impl Config {
    /// Reads the config file named by the flags or the environment and resolves every key.
    pub fn load(flags: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let (path, required) = file_to_read(flags.config.as_deref(), env);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => None,
            Err(e) => {
                let message = format!("cannot read the config file: {e}");
                return Err(ConfigError { file: path, line: 0, key: "-".into(), message }.into());
            }
        };
        Config::resolve(text.as_deref().map(|t| (path.as_path(), t)), flags, env)
    }

    /// Resolves every key from the file's text (if any), the environment and the flags.
    pub fn resolve(file: Option<(&Path, &str)>, flags: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let (path, text) = file.unwrap_or((Path::new(DEFAULT_FILE), ""));
        let keys: FileKeys = toml::from_str(text).map_err(|e| locate::toml_error(path, text, &e))?;
        let mut r = Resolver { path, text, env, rows: Vec::new(), exports: Vec::new() };
        let home = r.get("home", keys.home, flags.home)?.unwrap_or_else(|| PathBuf::from("/var/lib/hybridfs"));
        let log_level = r.get("log.level", keys.log.level, flags.log_level)?;
        let log_format = r.get("log.format", keys.log.format, flags.log_format)?.unwrap_or(LogFormat::Text);
        let m = keys.mount;
        let threads = r.get("mount.threads", m.threads, flags.threads)?.map_or(4, |t| t.0);
        let writeback_cache = r.get("mount.writeback_cache", m.writeback_cache, flags.writeback_cache)?.unwrap_or(false);
        let passthrough_writes =
            r.get("mount.passthrough_writes", m.passthrough_writes, flags.passthrough_writes)?.unwrap_or(true);
        let seal_delay = r.get("mount.seal_delay", m.seal_delay, flags.seal_delay)?.map_or(30, |s| s.0);
        let read_timeout = r.get("mount.read_timeout", m.read_timeout, flags.read_timeout)?.map(|s| s.0);
        let metrics_addr = r.get("mount.metrics_addr", m.metrics_addr, flags.metrics_addr)?;
        let dashboard = r.get("mount.dashboard", m.dashboard, flags.dashboard)?.unwrap_or(false);
        if dashboard && metrics_addr.is_none() {
            let origin = r.rows.last().map(|row| row.source.clone()).unwrap_or_default();
            let message = "needs mount.metrics_addr (--metrics-addr): the page is served on the metrics address".to_string();
            return Err(Error::Conflict { origin, key: "mount.dashboard", message });
        }
        let blocks_to_store = r.get("mount.blocks_to_store", m.blocks_to_store, flags.blocks_to_store)?;
        let host_lease = r.get("mount.host_lease", m.host_lease, flags.host_lease)?.map(|s| s.0);
        if host_lease == Some(0) {
            let origin = r.rows.last().map(|row| row.source.clone()).unwrap_or_default();
            return Err(Error::Conflict { origin, key: "mount.host_lease", message: "a lease of 0 s ends as it starts: give at least 1s".into() });
        }
        let f = keys.format;
        let block_size = r.get("format.block_size", f.block_size, flags.block_size)?.map_or_else(|| "1M".to_string(), |b| b.0);
        let store = r.get("format.store", f.store, flags.store)?.map(|s| s.0);
        let format_key_file = r.get("format.encryption_key_file", f.encryption_key_file, flags.format_key_file)?;
        let cache = r.get("clone.cache", keys.clone.cache, flags.cache)?.map(|c| c.bytes);
        let clone_key_file = r.get("clone.encryption_key_file", keys.clone.encryption_key_file, flags.clone_key_file)?;
        let agent = r.get("agent.address", keys.agent.address, flags.agent)?.map_or_else(|| crate::agentcmd::DEFAULT_ADDR.to_string(), |a| a.0);
        let agent_token_file = r.get("agent.token_file", keys.agent.token_file, flags.agent_token_file)?;
        let agent_token_file = agent_token_file.unwrap_or_else(|| PathBuf::from(crate::agentcmd::DEFAULT_TOKEN_FILE));
        for (name, value) in [
            ("s3.endpoint", keys.s3.endpoint),
            ("s3.region", keys.s3.region),
            ("s3.access_key_id", keys.s3.access_key_id),
            ("s3.secret_access_key", keys.s3.secret_access_key),
        ] {
            r.get(name, value, None)?;
        }
        Ok(Config {
            file: file.map(|(p, _)| p.to_path_buf()),
            home,
            log_level,
            log_format,
            threads,
            writeback_cache,
            passthrough_writes,
            seal_delay,
            read_timeout,
            metrics_addr,
            dashboard,
            blocks_to_store,
            host_lease,
            block_size,
            store,
            format_key_file,
            cache,
            clone_key_file,
            agent,
            agent_token_file,
            exports: r.exports,
            rows: r.rows,
        })
    }

    /// What `config check` warns about without refusing: `HYBRIDFS_*` variables that set
    /// nothing (a typo: the file's unknown keys are errors, but the environment holds other
    /// programs' variables too), and a secret in a file others may read.
    pub fn warnings(&self, vars: impl Iterator<Item = String>) -> Vec<String> {
        const OTHERS: &[&str] = &[FILE_ENV, "HYBRIDFS_ENCRYPTION_KEY", "HYBRIDFS_CRASHPOINT"];
        let known = |v: &str| KEYS.iter().any(|k| k.env.contains(&v)) || OTHERS.contains(&v) || v.starts_with("HYBRIDFS_TEST_");
        let mut out: Vec<String> = vars
            .filter(|v| v.starts_with("HYBRIDFS_") && !known(v))
            .map(|v| format!("environment {v} sets nothing (a typo? the variables are in doc/CONFIGURATION.md)"))
            .collect();
        out.sort();
        let secret_in_file = self.rows.iter().any(|r| KEYS.iter().any(|k| k.secret && k.name == r.key) && r.source.contains(':'));
        if let (true, Some(file)) = (secret_in_file, &self.file) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).map(|m| m.permissions().mode()).unwrap_or(0);
            if mode & 0o077 != 0 {
                out.push(format!("{} holds a secret but others may read it (mode {:o}): chmod 600 it", file.display(), mode & 0o777));
            }
        }
        out
    }

    /// Where a key's value came from.
    #[cfg(test)]
    pub fn source_of(&self, key: &str) -> Option<&str> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.source.as_str())
    }
}

#[cfg(test)]
mod tests;
