//! `hybridctl`: the admin CLI of hybridfs. It parses, calls the node library
//! (`hybridfs-node`), prints.
//!
//! Exit codes: 0 success, 1 the operation failed (or fsck found problems), 2 usage or bad
//! input. Errors are one line on stderr.

mod agentcmd;
mod config;
mod fmt;
mod mergecmd;
mod progress;
mod report;
mod snapcmd;
mod topcmd;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use config::{AgentAddr, BlockSize, CacheSize, Config, LogFormat, LogLevel, Secs, StoreUrl, Threads, Value};
use hybridfs_node::control::Request as R;
use hybridfs_node::create::CloneSpec;
use hybridfs_node::{mount, Home};
use std::path::PathBuf;
use std::process::ExitCode;

/// hybridfs: a copy-on-write file system whose volumes tier to an object store.
#[derive(Parser)]
#[command(
    name = "hybridctl",
    version,
    about = "hybridfs: copy-on-write volumes, mounted through FUSE, that tier to an object store",
    after_help = "Typical use:\n  hybridctl format data\n  hybridctl mount data /mnt/hybrid -d\n  hybridctl snapshot create before-training\n  hybridctl diff before-training\n  hybridctl status\n  hybridctl umount /mnt/hybrid\n\nExit codes: 0 success, 1 operation failed, 2 usage or bad input."
)]
struct Cli {
    /// State directory of all volumes [default: `home` in the config, $HYBRIDFS_HOME, or
    /// /var/lib/hybridfs]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// The config file [default: $HYBRIDFS_CONFIG, or /etc/hybridfs/hybridfs.toml if it
    /// exists]; keys in doc/CONFIGURATION.md. The environment overrides it, flags override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `warn,hybridfs_sync=debug`) [default: `log.level`, $HYBRIDFS_LOG;
    /// info for a mount, warn otherwise]
    #[arg(long, global = true, value_name = "FILTER", value_parser = parse::<LogLevel>)]
    log_level: Option<LogLevel>,
    /// Log lines as `text` or `json` [default: `log.format`, $HYBRIDFS_LOG_FORMAT, text]
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse::<LogFormat>)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new, empty volume.
    Format {
        /// Volume name: letters, digits, '.', '_' and '-'.
        name: String,
        /// Block size: a power of two from 64K to 64M (suffix K or M) [default: 1M].
        #[arg(long, value_parser = parse::<BlockSize>)]
        block_size: Option<BlockSize>,
        /// Object store of the volume: file:///PATH or s3://BUCKET/PREFIX [default: file://HOME/store]
        #[arg(long, value_parser = parse::<StoreUrl>)]
        store: Option<StoreUrl>,
        /// Encrypt everything the volume puts in its store with the key in this file (64 hex
        /// digits; created with a new random key if missing). The key never leaves the node;
        /// HYBRIDFS_ENCRYPTION_KEY overrides the file.
        #[arg(long, value_name = "PATH")]
        encryption_key_file: Option<PathBuf>,
        /// Do not check that the store is reachable and writable (a small object is written,
        /// read back and deleted under NAME/ before the volume is made).
        #[arg(long)]
        no_check: bool,
        /// A shared volume, mounted by several hosts at once: its metadata lives in this
        /// PostgreSQL database (postgres://USER[:PASSWORD]@HOST:PORT/DB, one volume per
        /// database) and needs --store; this host keeps only a descriptor, its staging and its
        /// cache. See doc/CLI.md, "Shared volumes".
        #[arg(long, value_name = "URL")]
        meta: Option<String>,
        /// With --meta: join the volume already in that database (every host after the first)
        /// instead of making a new one; block size and store are the volume's.
        #[arg(long, requires = "meta")]
        join: bool,
    },
    /// Mount a volume (foreground unless -d).
    Mount {
        /// Volume to mount.
        name: String,
        /// Existing directory to mount it on (see --mkdir).
        mountpoint: PathBuf,
        /// Create the mount point, with its parents, when it does not exist (the systemd unit
        /// does this rather than a `mkdir` of its own, which fails on the dead mount a killed
        /// mount process leaves; the mount detaches that one).
        #[arg(long)]
        mkdir: bool,
        /// Run in the background; return once the mount answers.
        #[arg(short = 'd', long)]
        daemon: bool,
        /// FUSE session threads [default: 4].
        #[arg(long, value_parser = parse::<Threads>)]
        threads: Option<Threads>,
        /// Cache writes in the kernel (writeback cache) instead of serving reads of not-yet-sealed
        /// files by kernel passthrough at local-disk speed; the kernel allows one of the two.
        /// Helps workloads of many small writes.
        #[arg(long)]
        writeback_cache: bool,
        /// Writes of new files and of files opened with O_TRUNC (checkpoints) go by kernel
        /// passthrough straight to local disk, not through the mount process [default: true;
        /// never on shared volumes, nor while the disk is nearly full].
        #[arg(long, value_name = "BOOL")]
        passthrough_writes: Option<bool>,
        /// Seconds a closed file stays untouched before its data is sealed into blocks
        /// [default: 30].
        #[arg(long, value_name = "SECS", value_parser = parse::<Secs>)]
        seal_delay: Option<Secs>,
        /// Seconds a read waits for a block from the object store before it fails with EIO
        /// [default: the volume's read_timeout_secs, else 30].
        #[arg(long, value_name = "SECS", value_parser = parse::<Secs>)]
        read_timeout: Option<Secs>,
        /// Serve metrics in the Prometheus text format at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9580); names in doc/METRICS.md.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Also serve the mount's web page at http://ADDR/dashboard (needs --metrics-addr;
        /// same exposure as /metrics: bind to loopback or a trusted network). doc/DASHBOARD.md.
        #[arg(long)]
        dashboard: bool,
        /// Mount read-only (`MS_RDONLY`): every change fails with EROFS (`-o ro` in fstab).
        /// Control commands (push, snapshot, merge) still work on the volume.
        #[arg(long)]
        read_only: bool,
        /// When written data goes to the object store: `later` (at push) or `on-fsync`
        /// (fsync and close() return once the file's new blocks are in the store: the data
        /// path of a volume several hosts share) [default: the volume's, else on-fsync for a
        /// shared volume (format --meta), later for the others].
        #[arg(long, value_name = "MODE", value_parser = parse::<config::BlocksToStore>)]
        blocks_to_store: Option<config::BlocksToStore>,
        /// A shared volume: how long this host's lease lasts without renewal; a host silent
        /// that long is dead and what it held open (files unlinked elsewhere) is freed by the
        /// others [default: 60s].
        #[arg(long, value_name = "SECS", value_parser = parse::<Secs>)]
        host_lease: Option<Secs>,
    },
    /// Unmount, waiting until everything is flushed and the mount process has exited.
    Umount {
        /// Where the volume is mounted.
        mountpoint: PathBuf,
        /// Seconds to wait for the mount process to flush and exit.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Refreshing rates of a mounted volume: MB/s read and written, blocks sealed; FUSE
    /// ops/s by kind and block fetches when the mount serves metrics (--metrics-addr).
    Top {
        /// The volume [default: the only one].
        name: Option<String>,
        /// The mount's metrics address [default: `mount.metrics_addr`].
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Seconds between refreshes (the mount rewrites metrics.json every 2 s).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// One refresh, then exit.
        #[arg(long)]
        once: bool,
        /// One JSON object per refresh (a line each).
        #[arg(long)]
        json: bool,
    },
    /// Show volumes: size, files, dirty bytes, mount state.
    Status {
        /// One volume [default: all].
        name: Option<String>,
        /// A hybrid-agent controller whose nodes and today's cost to show (only where its
        /// token file is readable).
        #[command(flatten)]
        agent: AgentArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Show it again every SECS seconds [default: 2]: redrawn in place on a terminal,
        /// repeated blocks (each headed by the time) elsewhere. Ctrl-C ends it.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// With --watch: stop after N screens.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Check metadata and block consistency (exit 1 when problems are found).
    Fsck {
        /// Volume to check (mounted or not).
        name: String,
        /// Also read and re-hash every sealed block (with --remote: every block in the store).
        #[arg(long)]
        verify: bool,
        /// Check the volume's branch in its object store instead: every block its layers name
        /// is there (and, with --verify, hashes right).
        #[arg(long)]
        remote: bool,
        /// With --remote: the branch [default: the volume's branch; for a clone not pushed yet,
        /// its source].
        #[arg(long)]
        branch: Option<String>,
        /// A shared volume: remove the rows crashed hosts left (hosts whose lease ended, their
        /// open rows) and purge the orphans no live host holds open, now instead of at a
        /// mounted host's next lease pass.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Snapshots: read-only, O(1) views of the volume, browsable at MOUNTPOINT/.snapshots/NAME.
    #[command(subcommand)]
    Snapshot(SnapCmd),
    /// What changed from snapshot FROM to snapshot TO (or to the live tree): added, deleted,
    /// modified (with byte ranges) and renamed paths. Reads only the change journal.
    Diff {
        from: String,
        /// A later snapshot [default: the live tree].
        to: Option<String>,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Return the live tree of an unmounted volume to snapshot NAME. The current state is
    /// kept first as snapshot pre-rollback-<UTC time>, so nothing is lost.
    Rollback {
        name: String,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Reclaim space now: drop versions only deleted snapshots kept, then delete blocks nothing
    /// references (a mounted volume also does this in the background every 30 s).
    Gc {
        #[arg(long)]
        volume: Option<String>,
        /// Keep unreferenced blocks this many seconds before deleting them (readers of a
        /// just-deleted snapshot may still be reading them).
        #[arg(long, default_value_t = 60)]
        grace: u64,
        #[arg(long)]
        json: bool,
    },
    /// Publish the live tree to the volume's object store as the next layer of a branch:
    /// only the blocks changed since the last push are uploaded (blocks, then the layer, then
    /// the branch head). An interrupted push resumes where it stopped.
    Push {
        #[arg(long)]
        volume: Option<String>,
        /// Branch to push to [default: the volume's branch: main, or a clone's own]. A branch
        /// this node never pushed starts where the volume's branch stands on this node (its
        /// last pushed layer or a clone's fork point): only the changes since move.
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make a local writable clone of a volume in an object store: only metadata is
    /// downloaded; file data is fetched when first read and cached locally.
    Clone {
        /// STORE/VOLUME, e.g. s3://bucket/prefix/data or file:///srv/store/data.
        url: String,
        /// The branch this clone pushes to (its own; e.g. the node's name).
        #[arg(long)]
        branch: String,
        /// The branch to clone.
        #[arg(long, default_value = "main")]
        source: String,
        /// Clone the state of an earlier push: layer N of the source branch (each push is a
        /// snapshot; `hybridctl push --json` reports its layer as `seq`) [default: the newest].
        #[arg(long, value_name = "LAYER")]
        from: Option<u64>,
        /// Local volume name [default: the source volume's name].
        #[arg(long)]
        name: Option<String>,
        /// Become the pusher of the source branch (with --branch B --source B): the restore of a
        /// home lost with its HYBRIDFS_HOME. The next push moves B's head from the one cloned;
        /// be sure the old home is gone.
        #[arg(long)]
        adopt: bool,
        /// Limit of the local block cache (suffix K, M, G; at least 16M) [default: unlimited].
        #[arg(long, value_parser = parse::<CacheSize>)]
        cache: Option<CacheSize>,
        /// The key file of an encrypted volume (or set HYBRIDFS_ENCRYPTION_KEY).
        #[arg(long, value_name = "PATH")]
        encryption_key_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Bring an unmounted clone forward to the newest head of the branch it was cloned from,
    /// when nothing changed on both sides (otherwise: refused, naming the records).
    Pull {
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch the data of files (directories: everything under them) of a mounted clone from
    /// the object store now, ahead of a job that will read them.
    Prefetch {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Merge a burst node's branch into this volume (mounted: online, in the mount process),
    /// keeping both sides of every conflict (exit 3 when conflicts were kept); `merge log`,
    /// `merge show ID`, `merge undo [ID]`.
    Merge(MergeArgs),
    /// Burst nodes of the hybrid-agent controller (over its local API): `nodes list`, `nodes
    /// rent`, `nodes drain NODE`, `nodes release NODE`.
    #[command(subcommand)]
    Nodes(NodesSub),
    /// A one-time login link to the hybrid-agent controller's web dashboard (nodes and their
    /// cost, unpushed bytes over time, pushes, nightly merges and conflicts): open it in a
    /// browser within 5 minutes. Needs the controller's TCP address (--agent HOST:PORT).
    Dashboard {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// The hybrid-agent controller's cost ledger: per node, type, start and stop as the
    /// provider reported them, hours, price per hour, cost (marked when the price is an estimate).
    Cost {
        /// Only what ran since DATE (YYYY-MM-DD: midnight in the burst window's zone; or an
        /// RFC 3339 time); hours count from it.
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// List the dirty-extent journal: the blocks written, per epoch.
    Journal {
        /// Volume whose journal to list.
        name: String,
        /// Only rows of this epoch and later.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        json: bool,
    },
    /// The config file: `config check` validates it, `config show` prints every effective
    /// value and where it came from (default, FILE:LINE, env VAR, flag).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script: `hybridctl completions bash > /etc/bash_completion.d/hybridctl`.
    Completions {
        shell: clap_complete::Shell,
    },
    /// Write man pages (hybridctl.1 and one per subcommand) into DIR.
    Man {
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check the config file, the environment and the flags; exit 2 with one line naming the
    /// file, line and key of the first problem.
    Check,
    /// Every key's effective value (secrets masked) and its source.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// clap's parser for a [`Value`]: flags are checked as the config file's values are.
fn parse<T: Value>(s: &str) -> Result<T, String> {
    T::parse(s)
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct MergeArgs {
    #[command(subcommand)]
    sub: Option<MergeSub>,
    /// The branch to merge (pushed by a clone of this volume).
    #[arg(required = true)]
    branch: Option<String>,
    /// Volume [default: the only volume, or main].
    #[arg(long)]
    volume: Option<String>,
    /// Show the plan (changes, conflicts, bytes to fetch); apply nothing.
    #[arg(long)]
    dry_run: bool,
    /// keep-both (ours keeps the path, theirs becomes a conflict copy), theirs or ours.
    #[arg(long, default_value = "keep-both")]
    policy: String,
    /// Apply even when the branch deletes more than --max-delete of the files or empties the root.
    #[arg(long)]
    confirm: bool,
    /// Percentage of the files the branch may delete without --confirm.
    #[arg(long, default_value_t = 50.0, value_name = "PCT")]
    max_delete: f64,
    /// Fetch the branch's data during the merge, with a progress line (otherwise only metadata
    /// moves: each block is fetched from the store, verified, on first read).
    #[arg(long)]
    prefetch: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum MergeSub {
    /// Past merges of the volume; with --nights, the hybrid-agent controller's nightly reports.
    Log {
        #[arg(long, conflicts_with = "nights")]
        volume: Option<String>,
        /// The controller's report of each night's merge window instead: when it opened, the
        /// branches merged and failed, whether the deadline was missed and the alert run.
        #[arg(long)]
        nights: bool,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// The report of one merge.
    Show {
        id: u64,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Return the volume to the pre-merge snapshot of merge ID [default: the newest not undone].
    Undo {
        id: Option<u64>,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// How to reach the hybrid-agent controller.
#[derive(clap::Args)]
struct AgentArgs {
    /// Its API: unix:/PATH or HOST:PORT [default: `agent.address` in the config, $HYBRID_AGENT,
    /// else unix:/var/lib/hybrid-agent/api.sock]
    #[arg(long, value_name = "ADDR", value_parser = parse::<AgentAddr>)]
    agent: Option<AgentAddr>,
    /// The admin token file (0600) [default: `agent.token_file` in the config,
    /// $HYBRID_AGENT_TOKEN_FILE, else /etc/hybridfs/agent.token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum NodesSub {
    /// Every node the controller asked for: phase, instance, start/stop, unpushed bytes, last
    /// push, whether its branch is merged, and what was lost.
    List {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// Rent one node now (inside the burst window, up to max_nodes).
    Rent {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// Drain NODE: it pushes everything and is terminated once it reports 0 unpushed bytes.
    Drain {
        node: String,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
    /// Release NODE now: terminated without waiting (it pushes at SIGTERM; what its final
    /// report still holds is recorded as lost).
    Release {
        node: String,
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SnapCmd {
    /// Take a snapshot of the live tree (O(1): it seals recent writes and ends the epoch).
    Create {
        /// Letters, digits, '.', '_', '-' and ':'; not starting with '.' or '-'.
        name: String,
        /// Volume [default: the only volume, or main].
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots: name, age, epoch, files and size of the tree, bytes only it keeps.
    List {
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    Show {
        name: String,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (refused while held); `hybridctl gc` reclaims its space.
    Delete {
        name: String,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Mark a snapshot as needed by WHO (a clone, a branch, a person): it cannot be deleted.
    Hold {
        name: String,
        #[arg(long, value_name = "WHO")]
        by: String,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the hold of WHO.
    Release {
        name: String,
        #[arg(long, value_name = "WHO")]
        by: String,
        #[arg(long)]
        volume: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// An error that is the caller's fault: exit code 2.
pub use hybridfs_node::bad_input as usage;

/// What the command line sets of the config's keys (doc/CONFIGURATION.md).
fn flags_of(cli: &Cli) -> config::Flags {
    let mut f = config::Flags {
        config: cli.config.clone(),
        home: cli.home.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format,
        ..Default::default()
    };
    match &cli.cmd {
        Cmd::Mount { threads, writeback_cache, passthrough_writes, seal_delay, read_timeout, metrics_addr, dashboard, blocks_to_store, host_lease, .. } => {
            f.blocks_to_store = *blocks_to_store;
            f.host_lease = *host_lease;
            f.threads = *threads;
            f.writeback_cache = writeback_cache.then_some(true);
            f.passthrough_writes = *passthrough_writes;
            f.seal_delay = *seal_delay;
            f.read_timeout = *read_timeout;
            f.metrics_addr = *metrics_addr;
            f.dashboard = dashboard.then_some(true);
        }
        Cmd::Format { block_size, store, encryption_key_file, .. } => {
            f.block_size = block_size.clone();
            f.store = store.clone();
            f.format_key_file = encryption_key_file.clone();
        }
        Cmd::Clone { cache, encryption_key_file, .. } => {
            f.cache = cache.clone();
            f.clone_key_file = encryption_key_file.clone();
        }
        Cmd::Nodes(NodesSub::List { agent, .. } | NodesSub::Rent { agent, .. })
        | Cmd::Nodes(NodesSub::Drain { agent, .. } | NodesSub::Release { agent, .. })
        | Cmd::Cost { agent, .. }
        | Cmd::Dashboard { agent, .. }
        | Cmd::Status { agent, .. }
        | Cmd::Merge(MergeArgs { sub: Some(MergeSub::Log { agent, .. }), .. }) => {
            f.agent = agent.agent.clone();
            f.agent_token_file = agent.token_file.clone();
        }
        _ => {}
    }
    f
}

fn run(cli: Cli, cfg: &Config) -> Result<ExitCode> {
    use agentcmd::{Agent, NodesCmd as N};
    let cmd = match cli.cmd {
        Cmd::Nodes(sub) => {
            let (cmd, json) = match sub {
                NodesSub::List { json, .. } => (N::List, json),
                NodesSub::Rent { json, .. } => (N::Rent, json),
                NodesSub::Drain { node, json, .. } => (N::Drain(node), json),
                NodesSub::Release { node, json, .. } => (N::Release(node), json),
            };
            return agentcmd::nodes(&Agent::new(&cfg.agent, &cfg.agent_token_file), cmd, json);
        }
        Cmd::Cost { since, json, .. } => return agentcmd::cost(&Agent::new(&cfg.agent, &cfg.agent_token_file), since, json),
        Cmd::Dashboard { json, .. } => return agentcmd::dashboard(&Agent::new(&cfg.agent, &cfg.agent_token_file), json),
        Cmd::Merge(MergeArgs { sub: Some(MergeSub::Log { nights: true, json, .. }), .. }) => {
            return agentcmd::nights(&Agent::new(&cfg.agent, &cfg.agent_token_file), json)
        }
        cmd => cmd,
    };
    let home = Home::at(&cfg.home);
    match cmd {
        Cmd::Format { name, no_check, meta: Some(meta), join, store, .. } => {
            let spec = hybridfs_node::shared::SharedSpec {
                name,
                meta,
                // Joining checks only a store given on the command line against the volume's.
                store: if join { store.map(|s| s.0) } else { cfg.store.clone() },
                block_size: Some(cfg.block_size.clone()),
                key_file: cfg.format_key_file.clone(),
                check: !no_check,
                join,
            };
            let made = home.format_shared(&spec)?;
            if let Some(path) = &made.new_key_file {
                eprintln!("hybridctl: a new encryption key is in {path}: copy it to every host of the volume and keep a copy elsewhere");
            }
            let how = if join { "joined shared volume" } else { "formatted shared volume" };
            println!("{how} {}: block size {}, store {}", made.name, fmt::human_bytes(made.block_size as u64), made.store);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Format { name, no_check, .. } => {
            let key_file = cfg.format_key_file.as_deref();
            let made = home.format(&name, &cfg.block_size, cfg.store.as_deref(), key_file, !no_check)?;
            if let Some(path) = &made.new_key_file {
                eprintln!("hybridctl: a new encryption key is in {path}: keep a copy elsewhere; without it the store's copy cannot be read");
            }
            println!("formatted volume {}: block size {}, store {}", made.name, fmt::human_bytes(made.block_size as u64), made.store);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Mount { name, mountpoint, daemon, read_only, mkdir, .. } => {
            if mkdir {
                create_mountpoint(&mountpoint)?;
            }
            let opts = mount::MountOptions {
                read_only,
                threads: cfg.threads,
                passthrough: !cfg.writeback_cache,
                passthrough_writes: cfg.passthrough_writes,
                seal_delay: cfg.seal_delay,
                read_timeout: cfg.read_timeout,
                metrics_addr: cfg.metrics_addr,
                dashboard: cfg.dashboard,
                blocks_to_store: cfg.blocks_to_store,
                host_lease: cfg.host_lease,
            };
            if daemon {
                let d = mount::mount_daemon(&home, &name, &mountpoint, &opts, &std::env::current_exe()?)?;
                println!("mounted {name} at {} (pid {})", d.mountpoint.display(), d.pid);
            } else {
                mount::mount_foreground(&home, &name, &mountpoint, &opts)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Umount { mountpoint, timeout } => {
            let (mp, unsealed) = mount::umount(&home, &mountpoint, timeout)?;
            println!("unmounted {}", mp.display());
            if let Some(line) = unsealed {
                eprintln!("hybridctl: warning: {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { name, json, watch: None, .. } => report::status(&home, name.as_deref(), json, &Agent::new(&cfg.agent, &cfg.agent_token_file)),
        Cmd::Status { name, json, watch: Some(secs), count, .. } => {
            let agent = Agent::new(&cfg.agent, &cfg.agent_token_file);
            report::watch(secs, count, json, || report::status(&home, name.as_deref(), json, &agent))
        }
        Cmd::Top { name, metrics_addr, interval, once, json } => topcmd::top(&home, name.as_deref(), metrics_addr.or(cfg.metrics_addr), interval, once, json),
        Cmd::Fsck { name, verify, remote: true, branch, json, .. } => report::fsck_remote(&home, &name, branch, verify, json),
        Cmd::Fsck { name, verify, repair, json, .. } => report::fsck(&home, &name, verify, repair, json),
        Cmd::Journal { name, since, json } => report::journal(&home, &name, since, json),
        Cmd::Snapshot(c) => {
            let (volume, req, json) = match c {
                SnapCmd::Create { name, volume, json } => (volume, R::SnapshotCreate { name }, json),
                SnapCmd::List { volume, json } => (volume, R::SnapshotList, json),
                SnapCmd::Show { name, volume, json } => (volume, R::SnapshotShow { name }, json),
                SnapCmd::Delete { name, volume, json } => (volume, R::SnapshotDelete { name }, json),
                SnapCmd::Hold { name, by, volume, json } => (volume, R::SnapshotHold { name, by, on: true }, json),
                SnapCmd::Release { name, by, volume, json } => (volume, R::SnapshotHold { name, by, on: false }, json),
            };
            snapcmd::run(&home, volume.as_deref(), req, json)
        }
        Cmd::Diff { from, to, volume, json } => snapcmd::run(&home, volume.as_deref(), R::Diff { from, to }, json),
        Cmd::Rollback { name, volume, json } => snapcmd::run(&home, volume.as_deref(), R::Rollback { name }, json),
        Cmd::Push { volume, branch, json } => snapcmd::push(&home, volume.as_deref(), branch, json),
        Cmd::Prefetch { paths, json } => snapcmd::prefetch(&home, &paths, json),
        Cmd::Merge(m) => {
            use mergecmd::MergeCmd as M;
            let (volume, cmd, json) = match m.sub {
                Some(MergeSub::Log { volume, json, .. }) => (volume, M::Log, json),
                Some(MergeSub::Show { id, volume, json }) => (volume, M::Show { id }, json),
                Some(MergeSub::Undo { id, volume, json }) => (volume, M::Undo { id }, json),
                None => {
                    let branch = m.branch.unwrap_or_default();
                    let cmd = M::Merge { branch, policy: m.policy, dry_run: m.dry_run, confirm: m.confirm, max_delete: m.max_delete, prefetch: m.prefetch };
                    (m.volume, cmd, m.json)
                }
            };
            mergecmd::run(&home, volume.as_deref(), cmd, json)
        }
        Cmd::Pull { volume, json } => snapcmd::run(&home, volume.as_deref(), R::Pull, json),
        Cmd::Clone { url, branch, source, from, name, adopt, json, .. } => {
            let spec = CloneSpec { url, branch, source, from, name, cache: cfg.cache, key_file: cfg.clone_key_file.clone(), adopt };
            let c = progress::run("clone", |on| home.clone_volume_with(&spec, on))?;
            for w in &c.report.warnings {
                eprintln!("hybridctl: warning: {w}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&c.report)?);
            } else {
                let r = &c.report;
                println!(
                    "cloned {} (branch {}, layer {}) as volume {}: {} records from {} layers in {:.2}s; {} blocks stay in the store until read; pushes go to branch {}",
                    c.volume, r.source, r.seq, c.name, r.records, r.layers, r.seconds, r.blocks, r.branch
                );
                if r.adopted {
                    println!("volume {} adopted branch {}: its next push moves the head from layer {}", c.name, r.branch, r.seq);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gc { volume, grace, json } => snapcmd::run(&home, volume.as_deref(), R::Gc { grace_secs: grace }, json),
        Cmd::Nodes(_) | Cmd::Cost { .. } | Cmd::Dashboard { .. } => {
            Err(anyhow::anyhow!("nodes, cost and dashboard are answered before the home is resolved"))
        }
        Cmd::Config(ConfigCmd::Check) => {
            for w in cfg.warnings(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
                eprintln!("hybridctl: warning: {w}");
            }
            match &cfg.file {
                Some(f) => println!("{}: ok", f.display()),
                None => println!("no config file ({} does not exist): defaults, environment and flags apply", config::DEFAULT_FILE),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(ConfigCmd::Show { json }) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&cfg.rows)?);
            } else {
                let w = cfg.rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
                let v = cfg.rows.iter().map(|r| r.value.len()).max().unwrap_or(0).min(40);
                println!("{:w$}  {:v$}  SOURCE", "KEY", "VALUE");
                for r in &cfg.rows {
                    println!("{:w$}  {:v$}  {}", r.key, r.value, r.source);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hybridctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir).map_err(|e| anyhow::anyhow!("write man pages to {}: {e}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mount --mkdir`: only a path that is not there at all is created; anything else (a
/// directory, a dead mount, a file) is left to the mount's own checks.
fn create_mountpoint(mp: &std::path::Path) -> Result<()> {
    match std::fs::symlink_metadata(mp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mp).map_err(|e| anyhow::anyhow!("create mount point {}: {e}", mp.display()))
        }
        _ => Ok(()),
    }
}

/// `mount -t fuse.hybridfs NAME DIR -o OPTS` (and an fstab line) runs
/// `mount.fuse.hybridfs NAME DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]` (a link to this binary):
/// turn that into `hybridctl [--home H] [--config F] mount NAME DIR -d ...`. Options of our
/// own: `home=DIR`, `config=FILE`, `threads=N`, `seal_delay=SECS`, `read_timeout=SECS`,
/// `metrics_addr=ADDR`, `blocks_to_store=MODE`, `passthrough_writes=BOOL`, `writeback_cache`, `dashboard`; the rest (`rw`, `defaults`, `noauto`, `nofail`,
/// `_netdev`, `x-systemd.*`, `user`, ...) are for mount(8) and systemd and are ignored here.
/// `ro` mounts read-only (`--read-only`).
fn mount_helper_args(args: Vec<String>) -> Result<Vec<String>, String> {
    let mut out = vec!["hybridctl".to_string()];
    let mut rest = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.into_iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => opts.extend(it.next().unwrap_or_default().split(',').map(str::to_string)),
            // The file system type (fuse.hybridfs), a mount namespace: not ours to use.
            "-t" | "-N" => drop(it.next()),
            _ if a.starts_with("-o") => opts.extend(a[2..].split(',').map(str::to_string)),
            _ if a.starts_with('-') => {}
            _ => rest.push(a),
        }
    }
    let mut flags = Vec::new();
    for o in opts {
        let flag = |f: &str, v: &str| [f.to_string(), v.to_string()];
        match o.split_once('=') {
            Some(("home", v)) => out.extend(flag("--home", v)),
            Some(("config", v)) => out.extend(flag("--config", v)),
            Some(("seal_delay", v)) => flags.extend(flag("--seal-delay", v)),
            Some(("read_timeout", v)) => flags.extend(flag("--read-timeout", v)),
            Some(("threads", v)) => flags.extend(flag("--threads", v)),
            Some(("metrics_addr", v)) => flags.extend(flag("--metrics-addr", v)),
            Some(("blocks_to_store", v)) => flags.extend(flag("--blocks-to-store", v)),
            Some(("passthrough_writes", v)) => flags.extend(flag("--passthrough-writes", v)),
            None if o == "writeback_cache" => flags.push("--writeback-cache".into()),
            None if o == "dashboard" => flags.push("--dashboard".into()),
            None if o == "ro" => flags.push("--read-only".into()),
            _ => {}
        }
    }
    if rest.len() != 2 {
        return Err(format!("usage: mount.fuse.hybridfs VOLUME MOUNTPOINT [-o OPTIONS] (got {rest:?})"));
    }
    out.push("mount".into());
    out.extend(rest);
    out.push("-d".into());
    out.extend(flags);
    Ok(out)
}

/// Commands that only print what they read locally may die quietly on a closed pipe
/// (`hybridctl journal | head`), as command-line tools do. Every other command ignores SIGPIPE
/// (Rust's default) and sees EPIPE as an error: the mount process must never be killed by a
/// client that went away or a connection the store reset, nor a push or a clone halfway.
fn dies_on_closed_pipe(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Status { .. } | Cmd::Journal { .. } | Cmd::Diff { .. } | Cmd::Cost { .. } => true,
        Cmd::Nodes(NodesSub::List { .. }) => true,
        Cmd::Config(_) | Cmd::Completions { .. } => true,
        Cmd::Fsck { remote, .. } => !remote,
        Cmd::Snapshot(SnapCmd::List { .. } | SnapCmd::Show { .. }) => true,
        _ => false,
    }
}

/// Hands what this process was told on to the processes it starts (a background mount reads
/// the config again): the file `--config` named, `--log-level`/`--log-format`, and the file's
/// `s3.*` values for the AWS SDK, which reads the environment. Called before any thread starts.
fn export(cli: &Cli, cfg: &Config) {
    if let Some(file) = &cli.config {
        std::env::set_var(config::FILE_ENV, std::path::absolute(file).unwrap_or_else(|_| file.clone()));
    }
    if let Some(level) = &cli.log_level {
        std::env::set_var("HYBRIDFS_LOG", &level.0);
    }
    if let Some(format) = cli.log_format {
        std::env::set_var("HYBRIDFS_LOG_FORMAT", format.show());
    }
    for (var, value) in &cfg.exports {
        std::env::set_var(var, value);
    }
}

/// One line on stderr (not eprintln!: it panics when stderr is closed, turning exit 1 into 101).
fn say_error(e: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "hybridctl: error: {e}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let as_helper = args.first().is_some_and(|a| a.ends_with("mount.fuse.hybridfs"));
    let cli = if as_helper {
        match mount_helper_args(args) {
            Ok(args) => Cli::parse_from(args),
            Err(e) => {
                say_error(e);
                return ExitCode::from(2);
            }
        }
    } else {
        Cli::parse_from(args)
    };
    let pipe = if dies_on_closed_pipe(&cli.cmd) { libc::SIG_DFL } else { libc::SIG_IGN };
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, pipe) };
    let cfg = match Config::load(flags_of(&cli), &|var| std::env::var(var).ok()) {
        Ok(cfg) => cfg,
        Err(e) => {
            say_error(e);
            return ExitCode::from(2);
        }
    };
    export(&cli, &cfg);
    // The mount process logs what it does; other commands print their result and only warn.
    // fuser's "Failed to send FUSE reply" is a request the kernel gave up on (interrupted):
    // routine, not an error.
    // The AWS credentials chain warns about each provider it tried: the store's own error
    // ("no credentials for the store …") says it in one line.
    let default = if matches!(cli.cmd, Cmd::Mount { .. }) {
        "info,fuser::session=error,fuser::reply=off,aws_config=error"
    } else {
        "warn,aws_config=error"
    };
    let filter = tracing_subscriber::EnvFilter::new(cfg.log_level.as_ref().map_or(default, |l| l.0.as_str()));
    use std::io::IsTerminal;
    // A log line that cannot be written (stderr a pipe nobody reads any more) is dropped: the
    // default would report it with eprintln!, which panics on that same closed stderr.
    // A span is logged when it closes, with its fields: at debug, one line per FUSE request
    // (`fuse`: op, ino, result) and per worker step (`worker`: name, result).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    match cfg.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = run(cli, &cfg);
    write_traffic_file();
    match result {
        Ok(code) => code,
        Err(e) => {
            say_error(format!("{e:#}"));
            ExitCode::from(hybridfs_node::exit_code(&e))
        }
    }
}

/// With `HYBRIDCTL_TRAFFIC_FILE` set: this process's object-store traffic by purpose (JSON),
/// for a caller that accounts for it (the burst agent's ledger). A failure only warns.
fn write_traffic_file() {
    let Some(path) = std::env::var_os(hybridfs_node::traffic::TRAFFIC_FILE_ENV) else { return };
    let body = serde_json::to_vec(&hybridfs_node::traffic::totals()).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, body) {
        tracing::warn!("write {}: {e}", std::path::Path::new(&path).display());
    }
}

#[cfg(test)]
mod tests {
    use super::{dies_on_closed_pipe, mount_helper_args, Cli};
    use clap::Parser;

    #[test]
    fn only_local_printing_commands_die_on_a_closed_pipe() {
        let cmd = |args: &[&str]| Cli::parse_from(args).cmd;
        for long_lived in [&["hybridctl", "mount", "v", "/mnt"][..], &["hybridctl", "push"], &["hybridctl", "clone", "s3://b/v", "--branch", "n"], &["hybridctl", "fsck", "v", "--remote"]] {
            assert!(!dies_on_closed_pipe(&cmd(long_lived)), "{long_lived:?} must ignore SIGPIPE");
        }
        assert!(dies_on_closed_pipe(&cmd(&["hybridctl", "journal", "v"])));
    }

    #[test]
    fn mount_helper_turns_fstab_options_into_flags() {
        let helper = |args: &[&str]| mount_helper_args(args.iter().map(|s| s.to_string()).collect());
        let args = ["/sbin/mount.fuse.hybridfs", "data", "/mnt/hybrid", "-o", "rw,home=/srv/h,seal_delay=5,writeback_cache,nofail"];
        let want = ["hybridctl", "--home", "/srv/h", "mount", "data", "/mnt/hybrid", "-d", "--seal-delay", "5", "--writeback-cache"];
        assert_eq!(helper(&args).unwrap(), want);
        // mount(8)'s own flags and the options meant for it and for systemd are not ours.
        let args = [
            "mount.fuse.hybridfs", "data", "/mnt/x", "-n", "-t", "fuse.hybridfs", "-o",
            "rw,noauto,_netdev,x-systemd.requires=network-online.target,config=/etc/h.toml,read_timeout=9",
        ];
        let want = ["hybridctl", "--config", "/etc/h.toml", "mount", "data", "/mnt/x", "-d", "--read-timeout", "9"];
        assert_eq!(helper(&args).unwrap(), want);
        Cli::try_parse_from(helper(&args).unwrap()).expect("the helper's command line parses");
        assert!(helper(&["mount.fuse.hybridfs", "data", "/mnt/x", "-o", "rw,ro"]).unwrap().ends_with(&["-d".to_string(), "--read-only".to_string()]));
        let dash = helper(&["mount.fuse.hybridfs", "data", "/mnt/x", "-o", "metrics_addr=127.0.0.1:9580,dashboard"]).unwrap();
        assert!(dash.ends_with(&["--metrics-addr", "127.0.0.1:9580", "--dashboard"].map(String::from)), "{dash:?}");
        Cli::try_parse_from(dash).expect("the helper's command line parses");
        assert!(helper(&["mount.fuse.hybridfs", "data"]).is_err(), "a missing mount point is refused");
    }
}
