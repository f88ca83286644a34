//! `hybrid-agent`: parses flags, reads the config, runs a role (see the library's docs).
//! Only this file reads flags, files and the environment; the library takes typed values.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use hybrid_agent::api::{self, Listener};
use hybrid_agent::clock::{Clock, ScaledClock, SystemClock};
use hybrid_agent::config::{Config, ProviderConfig, ProviderKind, Role};
use hybrid_agent::controller::{self, Budget, Controller, Desk, LeakPolicy, OfferRules, Settings};
use hybrid_agent::dashboard::Dashboard;
use hybrid_agent::node::{HttpLink, NodeAgent, NodeSettings, Step};
use hybrid_agent::notify;
use hybrid_agent::provider::command::CommandProvider;
use hybrid_agent::provider::ec2::{Ec2Provider, Ec2Secret};
use hybrid_agent::provider::local::LocalProvider;
use hybrid_agent::provider::{Bootstrap, Provider};
use hybrid_agent::scaler::ScaleRule;
use hybrid_agent::spot::{self, SpotWatch};
use hybrid_agent::state::StateStore;
use hybrid_agent::volume::Hybridctl;

#[derive(Parser)]
#[command(name = "hybrid-agent", about = "hybridfs node agent: the home controller and the burst node role")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks a config file: prints nothing and exits 0 when it is usable; else one line naming
    /// the file, line and key, exit 2.
    CheckConfig { file: PathBuf },
    /// Runs the home controller (role = "controller") until SIGTERM/SIGINT.
    Controller {
        #[arg(long, default_value = "/etc/hybridfs/agent.toml")]
        config: PathBuf,
        /// Agent time starts at this instant (RFC 3339, e.g. 2026-12-01T08:55:00+03:00)
        /// instead of the wall clock's now: for demos and end-to-end tests. Nodes get the
        /// same clock in their bootstrap.
        #[arg(long, value_name = "TIME")]
        clock_start: Option<jiff::Timestamp>,
        /// Agent time runs this many times faster than the wall clock (600: a day in 144 s).
        /// Every duration in the config is agent time.
        #[arg(long, value_name = "N", default_value_t = 1.0)]
        clock_speed: f64,
    },
    /// Runs a burst node (role = "node") until released, SIGTERM, or its lease runs out.
    Node {
        #[arg(long, default_value = "/etc/hybridfs/agent.toml")]
        config: PathBuf,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

/// How often a cloud node looks for a spot notice (EC2 gives about two minutes).
const SPOT_POLL_EVERY: Duration = Duration::from_secs(2);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sleeps `d`, waking early when a stop signal arrives or `flag` is set (a spot notice).
fn nap_unless(d: Duration, flag: &AtomicBool) {
    let end = Instant::now() + d;
    while !STOP.load(Ordering::Relaxed) && !flag.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())));
    }
}

fn load_config(file: &Path, role: Role) -> Result<Config> {
    let cfg = Config::load(file)?;
    if cfg.role() != role {
        bail!("{}: role is {:?}; this command runs {role:?}", file.display(), cfg.role());
    }
    Ok(cfg)
}

/// The `owner` tag of this controller: made once, kept in STATE_DIR/owner.
fn owner_id(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("owner");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let owner = format!("hyctl-{}", &api::random_token()?[..12]);
    std::fs::write(&path, &owner).with_context(|| format!("write {}", path.display()))?;
    Ok(owner)
}

/// Runs the load command (with `HYBRID_AGENT_NOW`: the agent time, RFC 3339, for a fake load
/// that follows the agent's clock); its first word, as a number.
fn read_load(cmd: &str, now: jiff::Timestamp) -> Option<f64> {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).env("HYBRID_AGENT_NOW", now.to_string()).output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v = text.split_whitespace().next().and_then(|w| w.parse().ok());
            if v.is_none() {
                warn!("load command printed no number: {:?}", text.trim());
            }
            v
        }
        Ok(o) => {
            warn!("load command: exit {}", o.status);
            None
        }
        Err(e) => {
            warn!("run load command: {e}");
            None
        }
    }
}

fn hybridfs_home(configured: Option<PathBuf>) -> PathBuf {
    configured
        .or_else(|| std::env::var_os("HYBRIDFS_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/hybridfs"))
}

/// The agent clock the flags ask for: the wall clock, or a shifted and sped-up one.
fn agent_clock(start: Option<jiff::Timestamp>, speed: f64) -> Result<Option<ScaledClock>> {
    if !(speed.is_finite() && speed > 0.0) {
        bail!("--clock-speed {speed}: a number above 0");
    }
    Ok(match (start, speed) {
        (None, s) if s == 1.0 => None,
        (start, speed) => Some(ScaledClock::starting_now(start.unwrap_or_else(jiff::Timestamp::now), speed)),
    })
}

/// How long to nap for `d` of agent time.
fn real(clock: Option<&ScaledClock>, d: Duration) -> Duration {
    clock.map_or(d, |c| c.real(d))
}

fn run_controller(file: &Path, scaled: Option<ScaledClock>) -> Result<()> {
    let cfg = load_config(file, Role::Controller)?;
    // Config::check guarantees these sections for the controller role.
    let (Some(vol), Some(api_cfg), Some(load), Some(up), Some(burst), Some(merge), Some(prov)) =
        (&cfg.volume, &cfg.api, &cfg.load, &cfg.scale_up, &cfg.burst, &cfg.merge, &cfg.provider)
    else {
        bail!("{}: incomplete controller config", file.display());
    };
    let store = StateStore::open(&cfg.state_dir)?;
    let token = api::load_or_create_token(&api_cfg.token_file).context("admin token")?;
    let clock: Arc<dyn Clock> = match scaled {
        Some(c) => {
            info!("agent clock: starts at {} and runs {}x the wall clock", c.start, c.speed);
            Arc::new(c)
        }
        None => Arc::new(SystemClock),
    };
    let provider = make_provider(prov, &cfg.state_dir, clock.clone())?;
    let offers = prov.offers.clone().unwrap_or_default();
    let leaks = cfg.leaks.clone().unwrap_or_default();
    let home = Arc::new(Hybridctl::new(Hybridctl::find_binary(), hybridfs_home(vol.hybridfs_home.clone()), vol.name.clone(), Default::default()));
    let sock = format!("unix:{}", cfg.state_dir.join("api.sock").display());
    let (down_threshold, down_for) = cfg.scale_down().unwrap_or((up.threshold, up.for_.0 * 2));
    let settings = Settings {
        owner: owner_id(&cfg.state_dir)?,
        volume: vol.name.clone(),
        store: vol.store.clone(),
        instance_type: prov.instance_type.clone(),
        rule: ScaleRule { up_threshold: up.threshold, up_for: up.for_.0, down_threshold, down_for, max_nodes: *burst.max_nodes.get_ref() },
        burst: burst.window.window(),
        merge: merge.window(),
        lease: burst.lease.0,
        controller_addr: api_cfg.advertise.clone().unwrap_or_else(|| sock.clone()),
        node_env: Default::default(),
        credentials_command: vol.credentials_command.clone(),
        alert_command: merge.alert_command.clone(),
        clock: scaled,
        budget: cfg.budget.as_ref().map(|b| Budget {
            per_day: *b.per_day.get_ref(),
            per_month: b.per_month.as_ref().map(|m| *m.get_ref()),
            drain_time: b.drain_time.0,
        }),
        offers: OfferRules {
            gpu_type: offers.gpu_type,
            min_gpus: offers.min_gpus.unwrap_or(0),
            max_price_per_hour: offers.max_price_per_hour.map(|p| *p.get_ref()),
            allow_spot: offers.allow_spot,
            no_capacity_backoff: offers.no_capacity_backoff.map_or(OfferRules::default().no_capacity_backoff, |d| d.0),
        },
        leaks: LeakPolicy { grace: leaks.grace.0, terminate: leaks.terminate },
    };
    let mut ctrl = Controller::open(settings, store, provider, home, clock.clone())?;
    let desk = Desk::attach(&mut ctrl);
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    let dash = Arc::new(Dashboard::new());
    for addr in [api_cfg.listen.as_str(), sock.as_str()] {
        let listener = Listener::bind(addr).with_context(|| format!("listen on {addr}"))?;
        info!("api listening on {}", listener.local_addr());
        let (k, t, d) = (desk.clone(), token.clone(), dash.clone());
        let handler = move |req: &api::Request| d.route(&k, &t, req).unwrap_or_else(|| api::route(&k, &t, req));
        servers.push(api::serve(listener, Arc::new(handler), stop.clone())?);
    }
    info!("controller running (state {})", cfg.state_dir.display());
    notify::notify(&format!("READY=1
STATUS=controller of volume {} running", vol.name));
    controller::run(&mut ctrl, &desk, real(scaled.as_ref(), load.every.0), &STOP, |now| read_load(&load.command, now), |c| {
        dash.sample(c.state(), c.now())
    });
    notify::notify("STOPPING=1");
    info!("controller stopping; its nodes keep running and are adopted at the next start");
    stop.store(true, Ordering::Relaxed);
    servers.into_iter().for_each(|s| drop(s.join()));
    Ok(())
}

/// The provider the config names. An `ec2` one is checked with one call first, so a wrong
/// key, region or endpoint stops the controller with one line.
fn make_provider(prov: &ProviderConfig, state_dir: &Path, clock: Arc<dyn Clock>) -> Result<Arc<dyn Provider>> {
    Ok(match prov.kind() {
        ProviderKind::Local => {
            let local = prov.local.clone().unwrap_or_default();
            Arc::new(LocalProvider::new(local, &state_dir.join("local-nodes"), clock)?)
        }
        ProviderKind::Command => {
            // Config::check guarantees [provider.command] for this kind.
            let command = prov.command.clone().context("[provider.command]")?;
            Arc::new(CommandProvider::new(command, clock))
        }
        ProviderKind::Ec2 => {
            // Config::check guarantees the section for kind "ec2".
            let ec2 = prov.ec2.clone().context("provider.ec2: missing")?;
            let secret = Ec2Secret::load(&ec2).map_err(|e| anyhow::anyhow!("provider.ec2: {e}"))?;
            let p = Ec2Provider::new(ec2, secret)?;
            p.check()?;
            Arc::new(p)
        }
    })
}

fn run_node(file: &Path) -> Result<()> {
    let cfg = load_config(file, Role::Node)?;
    let node = cfg.node();
    let boot_path = node.bootstrap.clone().unwrap_or_else(|| cfg.state_dir.join("bootstrap.json"));
    let boot: Bootstrap = serde_json::from_slice(&std::fs::read(&boot_path).with_context(|| format!("read {}", boot_path.display()))?)
        .with_context(|| format!("read {}", boot_path.display()))?;
    let volume = Arc::new(Hybridctl::new(Hybridctl::find_binary(), cfg.state_dir.join("hybridfs"), boot.volume.clone(), boot.env.clone()));
    let link = Arc::new(HttpLink { addr: boot.controller.clone(), node: boot.node.clone(), token: boot.token.clone() });
    let every = node.report_every.0.min(Duration::from_secs(boot.lease_secs.max(3) / 3));
    let settings = NodeSettings { mountpoint: node.mountpoint.clone(), push_every: node.push_every.0 };
    let scaled = boot.clock;
    let clock: Arc<dyn Clock> = match scaled {
        Some(c) => Arc::new(c),
        None => Arc::new(SystemClock),
    };
    let endpoint = boot.metadata_endpoint.clone();
    let mut agent = NodeAgent::new(boot, settings, volume, link, clock);
    agent.start().context("start the node")?;
    notify::notify("READY=1\nSTATUS=burst node running");
    let mut stopping = false;
    // Only a cloud node's bootstrap names a metadata endpoint; nothing else is ever polled.
    if let Some(endpoint) = endpoint {
        let watch = SpotWatch::new(&endpoint).map_err(anyhow::Error::msg)?;
        info!("polling {endpoint} for spot interruption notices");
        spot::spawn_watch(watch, SPOT_POLL_EVERY, agent.notice.clone(), agent.stop.clone())?;
    }
    loop {
        if STOP.load(Ordering::Relaxed) {
            agent.stop.store(true, Ordering::Relaxed);
            if !std::mem::replace(&mut stopping, true) {
                notify::notify("STOPPING=1\nSTATUS=pushing, then stopping");
            }
        }
        if agent.tick() == Step::Exit {
            return Ok(());
        }
        nap_unless(real(scaled.as_ref(), every), &agent.stop);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    install_signals();
    let result = match cli.cmd {
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hybrid-agent: error: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Controller { config, clock_start, clock_speed } => agent_clock(clock_start, clock_speed).and_then(|c| run_controller(&config, c)),
        Cmd::Node { config } => run_node(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hybrid-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
