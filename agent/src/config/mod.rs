//! The agent's one TOML file, for both roles.
//!
//! ```toml
//! role = "controller"                 # or "node"
//! state_dir = "/var/lib/hybrid-agent"
//!
//! [volume]                            # the home volume the nodes clone and the merge fills
//! name = "main"
//! store = "file:///srv/hybridfs-store"   # the URL nodes clone from (STORE/VOLUME)
//! hybridfs_home = "/var/lib/hybridfs"    # HYBRIDFS_HOME of the home volume
//! credentials_command = "/usr/local/bin/mint-node-creds"  # optional: per-node store credentials
//!
//! [api]
//! listen = "127.0.0.1:7870"
//! token_file = "/etc/hybridfs/agent.token"   # created 0600 if missing
//!
//! [load]
//! command = "cat /run/gpu-load"       # prints one number
//! every = "30s"
//!
//! [scale_up]
//! threshold = 90
//! for = "10m"
//!
//! [scale_down]                        # optional; default: below scale_up.threshold for 2x scale_up.for
//! threshold = 50
//! for = "20m"
//!
//! [burst]
//! window = { start = "08:00", end = "17:00", tz = "Europe/Istanbul" }
//! max_nodes = 2
//! lease = "5m"                        # a node that loses the controller this long pushes and stops
//!
//! [merge]
//! start = "17:30"
//! deadline = "07:30"
//! tz = "Europe/Istanbul"
//! alert_command = "/usr/local/bin/page-oncall"   # optional
//!
//! [provider]
//! kind = "local"                      # or "command": [provider.command] program = "/path/prog",
//!                                     # or "ec2": [provider.ec2] (its keys: provider/ec2.rs)
//! ```
//!
//! `[budget]`, `[leaks]` and `[provider.offers]`: see [`rent`].
//!
//! Every error names the file, the line and the key (`agent.toml:12: scale_up.for: ...`):
//! values are checked while they are deserialized (times, zones, durations), so toml's span
//! points at the bad value, and the span is mapped back to its key by walking the document.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::window::DailyWindow;

pub use hybridfs_config::ConfigError;
use hybridfs_config as locate;

pub mod rent;
pub use rent::{BudgetConfig, LeaksConfig, OffersConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    Node,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub role: toml::Spanned<Role>,
    pub state_dir: PathBuf,
    pub volume: Option<VolumeConfig>,
    pub api: Option<ApiConfig>,
    pub load: Option<LoadConfig>,
    pub scale_up: Option<ScaleUp>,
    pub scale_down: Option<ScaleDown>,
    pub burst: Option<BurstConfig>,
    pub merge: Option<MergeConfig>,
    pub provider: Option<ProviderConfig>,
    pub node: Option<NodeConfig>,
    pub budget: Option<BudgetConfig>,
    pub leaks: Option<LeaksConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub store: String,
    pub hybridfs_home: Option<PathBuf>,
    /// Mints each node's store credentials (see `credentials`); optional.
    pub credentials_command: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    pub token_file: PathBuf,
    /// How nodes reach the API (`http://home.example:7870`), written into their bootstrap.
    /// Default: the controller's unix socket (nodes on this host: the `local` provider).
    pub advertise: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    pub command: String,
    #[serde(default = "thirty_seconds")]
    pub every: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleUp {
    pub threshold: f64,
    #[serde(rename = "for")]
    pub for_: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDown {
    pub threshold: toml::Spanned<f64>,
    #[serde(rename = "for")]
    pub for_: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstConfig {
    pub window: WindowConfig,
    pub max_nodes: toml::Spanned<u32>,
    #[serde(default = "five_minutes")]
    pub lease: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub start: ClockTime,
    pub end: ClockTime,
    pub tz: Zone,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    pub start: ClockTime,
    pub deadline: ClockTime,
    pub tz: Zone,
    pub alert_command: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: toml::Spanned<ProviderKind>,
    /// The instance type to rent (default: the provider's first offer).
    pub instance_type: Option<String>,
    pub local: Option<crate::provider::local::LocalConfig>,
    pub command: Option<crate::provider::command::CommandConfig>,
    /// Constraints on the offers rented (cheapest first among those that meet them).
    pub offers: Option<OffersConfig>,
    pub ec2: Option<crate::provider::ec2::Ec2Config>,
}

impl ProviderConfig {
    pub fn kind(&self) -> ProviderKind {
        *self.kind.get_ref()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Command,
    Ec2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the provider left the bootstrap JSON (default: STATE_DIR/bootstrap.json).
    pub bootstrap: Option<PathBuf>,
    #[serde(default = "default_mountpoint")]
    pub mountpoint: PathBuf,
    #[serde(default = "ten_minutes")]
    pub push_every: Dur,
    #[serde(default = "thirty_seconds")]
    pub report_every: Dur,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            bootstrap: None,
            mountpoint: default_mountpoint(),
            push_every: ten_minutes(),
            report_every: thirty_seconds(),
        }
    }
}

fn default_mountpoint() -> PathBuf {
    PathBuf::from("/mnt/hybrid")
}
fn thirty_seconds() -> Dur {
    Dur(Duration::from_secs(30))
}
fn five_minutes() -> Dur {
    Dur(Duration::from_secs(300))
}
fn ten_minutes() -> Dur {
    Dur(Duration::from_secs(600))
}

/// A duration written `90s`, `10m`, `2h` or `1d` (one number, one unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration (like 30s, 10m, 2h, 1d)"))?;
        let secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(format!("`{s}` is not a duration (like 30s, 10m, 2h, 1d)")),
        };
        Ok(Dur(Duration::from_secs(n.saturating_mul(secs))))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A time of day written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockTime(pub jiff::civil::Time);

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_clock_time(&s).map(ClockTime).map_err(serde::de::Error::custom)
    }
}

fn parse_clock_time(s: &str) -> Result<jiff::civil::Time, String> {
    let bad = || format!("`{s}` is not a time of day (HH:MM, 00:00 to 23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    jiff::civil::Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// An IANA time zone name (`Europe/Istanbul`, `UTC`).
#[derive(Clone)]
pub struct Zone {
    pub name: String,
    pub tz: jiff::tz::TimeZone,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl Zone {
    pub fn get(name: &str) -> Result<Zone, String> {
        let tz = jiff::tz::TimeZone::get(name)
            .map_err(|_| format!("`{name}` is not a known time zone (an IANA name like Europe/Istanbul or UTC)"))?;
        Ok(Zone { name: name.to_string(), tz })
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Zone::get(&s).map_err(serde::de::Error::custom)
    }
}

impl WindowConfig {
    pub fn window(&self) -> DailyWindow {
        DailyWindow::new(self.start.0, self.end.0, self.tz.tz.clone())
    }
}

impl MergeConfig {
    pub fn window(&self) -> DailyWindow {
        DailyWindow::new(self.start.0, self.deadline.0, self.tz.tz.clone())
    }
}

impl Config {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: "-".into(),
            message: format!("read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text` (the content of `path`) and checks what one field alone cannot.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| locate::toml_error(path, text, &e))?;
        cfg.check().map_err(|(span, key, message)| ConfigError {
            file: path.to_path_buf(),
            line: locate::line_of(text, span.start),
            key: key.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    pub fn role(&self) -> Role {
        *self.role.get_ref()
    }

    fn check(&self) -> Result<(), (std::ops::Range<usize>, &'static str, String)> {
        let role_span = self.role.span();
        if self.role() == Role::Controller {
            let need = [
                ("volume", self.volume.is_some()),
                ("api", self.api.is_some()),
                ("load", self.load.is_some()),
                ("scale_up", self.scale_up.is_some()),
                ("burst", self.burst.is_some()),
                ("merge", self.merge.is_some()),
                ("provider", self.provider.is_some()),
            ];
            if let Some((name, _)) = need.iter().find(|(_, present)| !present) {
                return Err((role_span, "role", format!("role \"controller\" needs a [{name}] section")));
            }
        }
        if let Some(p) = &self.provider {
            if p.kind() == ProviderKind::Ec2 && p.ec2.as_ref().is_none_or(|e| e.offers.is_empty()) {
                return Err((p.kind.span(), "provider.kind", "kind \"ec2\" needs [provider.ec2] with at least one offer".into()));
            }
        }
        if let Some(burst) = &self.burst {
            if *burst.max_nodes.get_ref() == 0 {
                return Err((burst.max_nodes.span(), "burst.max_nodes", "must be at least 1".into()));
            }
        }
        if let Some(b) = &self.budget {
            b.check()?;
        }
        if let Some(p) = &self.provider {
            if let Some(o) = &p.offers {
                o.check()?;
            }
            match (p.kind.get_ref(), &p.command) {
                (ProviderKind::Command, None) => {
                    return Err((p.kind.span(), "provider.kind", "\"command\" needs [provider.command] with `program`".into()))
                }
                (ProviderKind::Command, Some(c)) if c.program.get_ref().trim().is_empty() => {
                    return Err((c.program.span(), "provider.command.program", "is empty".into()))
                }
                _ => {}
            }
        }
        if let (Some(up), Some(down)) = (&self.scale_up, &self.scale_down) {
            if *down.threshold.get_ref() >= up.threshold {
                return Err((
                    down.threshold.span(),
                    "scale_down.threshold",
                    format!(
                        "must be below scale_up.threshold ({}), or nodes would be rented and released in turn",
                        up.threshold
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The scale-down rule: configured, or below the scale-up threshold for twice its `for`.
    pub fn scale_down(&self) -> Option<(f64, Duration)> {
        let up = self.scale_up.as_ref()?;
        Some(match &self.scale_down {
            Some(d) => (*d.threshold.get_ref(), d.for_.0),
            None => (up.threshold, up.for_.0 * 2),
        })
    }

    pub fn node(&self) -> NodeConfig {
        self.node.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
