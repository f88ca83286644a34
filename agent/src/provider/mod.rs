//! Compute providers: where burst nodes come from.
//!
//! One trait for every provider (`memory` for tests, `local`, `command`: user scripts, `ec2`). The
//! contract the controller relies on, and that every implementation must keep:
//!
//! * **Launch is idempotent by key.** `launch` with an idempotency key that was already used
//!   returns the instance that key made (whatever its state) and never starts a second one. The
//!   controller derives the key from the intent it wrote to disk *before* calling, so a crash
//!   between the call and the record is repaired by calling again.
//! * **Ownership tags.** Every instance carries the tags it was launched with: `owner` (which
//!   controller), `intent` (the record in its state), `volume`, `expires` (RFC 3339, a last line
//!   of defence). `describe` finds instances by tags only, never by address.
//! * **Terminate is idempotent** and only *asks*: the controller counts a node gone when a later
//!   `describe` says `Terminated` (or no longer lists it).
//! * **Interruption notices** (spot reclaim) are reported by `interruptions`.

pub mod command;
pub mod ec2;
pub mod local;
pub mod memory;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const TAG_OWNER: &str = "owner";
pub const TAG_INTENT: &str = "intent";
pub const TAG_VOLUME: &str = "volume";
pub const TAG_EXPIRES: &str = "expires";

/// Something a provider can rent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub instance_type: String,
    pub gpus: u32,
    /// Price per hour in USD; `None` when the provider does not say (the ledger then marks
    /// its costs as estimates).
    pub price_per_hour: Option<f64>,
    pub spot: bool,
    /// The GPU model (`a100`, `h100`, `l4`), when the provider says: matched by the
    /// `provider.offers.gpu_type` constraint.
    #[serde(default)]
    pub gpu_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Terminated,
}

/// An instance as the provider describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub state: InstanceState,
    pub tags: BTreeMap<String, String>,
    /// When the provider started billing it, as the provider reports it.
    pub launched_at: Option<Timestamp>,
    /// When it stopped, as the provider reports it.
    pub terminated_at: Option<Timestamp>,
}

/// What a node needs to start: handed over by the provider (user data on a cloud, a file for
/// `local`). Holds secrets (the node's token, store credentials): never logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// The node's name (its intent id).
    pub node: String,
    /// The store the volume lives in (`file:///...` or `s3://bucket/prefix`) and its name.
    pub store: String,
    pub volume: String,
    /// The branch the node pushes (`burst-<node>`) and the one it clones.
    pub branch: String,
    pub source_branch: String,
    /// How the node reaches the controller: `unix:/path/api.sock` or `http://host:port`.
    pub controller: String,
    pub token: String,
    /// The dead-man switch: without an answer from the controller this long, push and stop.
    pub lease_secs: u64,
    /// Environment for the volume tools (scoped store credentials, endpoint).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The controller's clock when it is not the wall clock (`--clock-start/--clock-speed`):
    /// the node keeps the same time.
    #[serde(default)]
    pub clock: Option<crate::clock::ScaledClock>,
    /// On a cloud node: the instance metadata endpoint to poll for spot interruption notices
    /// (`http://169.254.169.254` on EC2; set by the `ec2` provider). `None`: nothing is polled.
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Invariant 8: the token and the credentials in `env` are never printed.
        f.debug_struct("Bootstrap")
            .field("node", &self.node)
            .field("store", &self.store)
            .field("volume", &self.volume)
            .field("branch", &self.branch)
            .field("controller", &self.controller)
            .field("lease_secs", &self.lease_secs)
            .field("metadata_endpoint", &self.metadata_endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub idempotency_key: String,
    pub instance_type: String,
    pub tags: BTreeMap<String, String>,
    pub bootstrap: Bootstrap,
}

/// A notice that the provider will take an instance back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interruption {
    pub instance_id: String,
    pub at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later: capacity, throttling, a network blip.
    #[error("{0} (transient)")]
    Transient(String),
    /// Nothing was started: the provider has no capacity for this offer now. The controller
    /// backs the offer off and tries the next one.
    #[error("{0} (no capacity)")]
    NoCapacity(String),
    #[error("{0}")]
    Permanent(String),
}

impl ProviderError {
    /// Worth retrying later with the same request (no capacity is not: try another offer).
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}

pub trait Provider: Send + Sync {
    fn name(&self) -> &str;
    fn offers(&self) -> Result<Vec<Offer>, ProviderError>;
    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError>;
    /// Every instance (any state the provider still lists) carrying all of `tags`.
    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError>;
    fn terminate(&self, instance_id: &str) -> Result<(), ProviderError>;
    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError>;
}

/// Whether `instance` carries every tag of `filter`.
pub fn has_tags(instance_tags: &BTreeMap<String, String>, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| instance_tags.get(k) == Some(v))
}

#[doc(hidden)]
pub mod conformance;
