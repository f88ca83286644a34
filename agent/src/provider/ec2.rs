//! The `ec2` provider: burst nodes on Amazon EC2, or on any EC2-compatible endpoint (the
//! tests use PyPI `moto[server]` on 127.0.0.1).
//!
//! ```toml
//! [provider]
//! kind = "ec2"
//! instance_type = "g5.xlarge"            # which of the offers to rent (default: the first)
//! [provider.ec2]
//! region = "eu-central-1"
//! endpoint_url = "http://127.0.0.1:5000" # optional: an EC2-compatible endpoint
//! access_key_id = "AKIA..."
//! secret_access_key_file = "/etc/hybridfs/aws-secret"   # 0600; refused if others can read it
//! session_token_file = "/etc/hybridfs/aws-session"      # optional, 0600
//! image_id = "ami-0123456789abcdef0"     # an image with hybrid-agent, hybridctl and a node config
//! spot = true                            # and [provider.offers] allow_spot = true
//! max_price = 1.20                       # optional spot cap per hour (default: on-demand price)
//! subnet_id = "subnet-..."               # optional, like security_group_ids, key_name,
//! security_group_ids = ["sg-..."]        # iam_instance_profile
//! offers = [{ instance_type = "g5.xlarge", gpus = 1, price_per_hour = 1.006 }]
//! metadata_endpoint = "http://169.254.169.254"   # what nodes poll for spot notices
//! ```
//!
//! Credentials, region and endpoint come from this file only: no `aws-config`, no default
//! credential chain, so nothing here ever asks the instance metadata service for credentials.
//!
//! * **Launch** (idempotent by key, in our layer): first DescribeInstances by the request's
//!   `owner` and `intent` tags; an instance found there *is* the launch (adopted, whatever its
//!   state). Only when none is found: RunInstances (MinCount = MaxCount = 1) with the tags, spot
//!   or on-demand, and a `ClientToken` derived from the idempotency key. EC2 itself deduplicates
//!   the token (for the case where a just-made instance is not yet visible to describe); moto does
//!   not, and ignores MaxCount, which is why the describe comes first.
//! * **User data** is a shell script that writes the node's [`Bootstrap`] (JSON, one line) to
//!   `bootstrap_path` with umask 077 and execs `node_command`; [`bootstrap_from_user_data`]
//!   reads it back. It holds the node's token: anyone allowed DescribeInstanceAttribute on the
//!   account can read it, as with any user data.
//! * **Describe** filters by tags only (`tag:KEY=VALUE`), never by address. States:
//!   pending → pending; running → running; shutting-down, stopping, stopped → stopping;
//!   terminated → terminated (its time parsed from the state transition reason when given).
//! * **Terminate** is TerminateInstances; an id EC2 no longer knows counts as done (a later
//!   describe, which no longer lists it, confirms).
//! * **Interruptions**: EC2 tells the instance, not us. The node polls `metadata_endpoint`
//!   (`node::SpotWatch`) and reports the notice; `interruptions()` here returns none.
//!
//! Every error is one line naming what was called and where (`describe instances at
//! http://127.0.0.1:1 (region us-east-1): cannot connect: Connection refused`), transient
//! (connection, timeout, throttling, 5xx), no capacity (InsufficientInstanceCapacity and the
//! like: the controller tries the next offer) or permanent (credentials refused, unknown
//! image, bad parameters). No error, log line or `Debug` output holds the secret key or token.
//!
//! The SDK is async; this provider owns a current-thread tokio runtime and blocks on it per
//! call (the controller is synchronous and calls the provider from its reconcile step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceAttributeName, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceType, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer};
use tracing::{info, warn};

use super::*;

/// `[provider.ec2]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Config {
    pub region: Ec2Region,
    /// An EC2-compatible endpoint instead of AWS's (`http://127.0.0.1:5000` for moto).
    pub endpoint_url: Option<String>,
    pub access_key_id: String,
    /// A file holding the secret access key (0600: refused if group or others can read it).
    pub secret_access_key_file: PathBuf,
    pub session_token_file: Option<PathBuf>,
    pub image_id: String,
    #[serde(default)]
    pub spot: bool,
    /// The most a spot node may cost per hour (default: EC2's, the on-demand price).
    pub max_price: Option<f64>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// An instance profile name (its role is what the node's tools get from the metadata service).
    pub iam_instance_profile: Option<String>,
    /// What may be rented; `provider.instance_type` picks one (default: the first).
    pub offers: Vec<Ec2Offer>,
    /// The instance metadata endpoint the nodes poll for spot interruption notices.
    #[serde(default = "default_metadata_endpoint")]
    pub metadata_endpoint: String,
    /// What the user data script runs once the bootstrap is written.
    #[serde(default = "default_node_command")]
    pub node_command: String,
    /// Where the user data script writes the bootstrap on the node.
    #[serde(default = "default_bootstrap_path")]
    pub bootstrap_path: PathBuf,
    /// The longest one EC2 call may take, retries included.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Offer {
    pub instance_type: String,
    #[serde(default)]
    pub gpus: u32,
    pub price_per_hour: Option<f64>,
    /// The GPU model (`a10g`, `h100`), for `provider.offers.gpu_type`.
    pub gpu_type: Option<String>,
}

fn default_metadata_endpoint() -> String {
    "http://169.254.169.254".into()
}
fn default_node_command() -> String {
    "hybrid-agent node --config /etc/hybridfs/agent.toml".into()
}
fn default_bootstrap_path() -> PathBuf {
    PathBuf::from("/var/lib/hybrid-agent/bootstrap.json")
}
fn default_call_timeout() -> u64 {
    30
}

/// The AWS regions as of this writing (the SDK's endpoint rules accept any name of the right
/// shape, so a typo would only show as a DNS failure, or a 500 from moto). A new region is
/// added here.
pub const KNOWN_REGIONS: &[&str] = &[
    "af-south-1", "ap-east-1", "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
    "ap-south-1", "ap-south-2", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3",
    "ap-southeast-4", "ap-southeast-5", "ap-southeast-6", "ap-southeast-7", "ca-central-1",
    "ca-west-1", "cn-north-1", "cn-northwest-1", "eu-central-1", "eu-central-2", "eu-north-1",
    "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-2", "eu-west-3", "eusc-de-east-1",
    "il-central-1", "me-central-1", "me-south-1", "mx-central-1", "sa-east-1", "us-east-1",
    "us-east-2", "us-gov-east-1", "us-gov-west-1", "us-west-1", "us-west-2",
];

/// A region name, checked against [`KNOWN_REGIONS`] while the config is read (so the error
/// names the file, line and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Region(pub String);

impl<'de> Deserialize<'de> for Ec2Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if KNOWN_REGIONS.contains(&s.as_str()) {
            Ok(Ec2Region(s))
        } else {
            Err(serde::de::Error::custom(format!("`{s}` is not a known AWS region (like us-east-1 or eu-central-1)")))
        }
    }
}

/// The secret half of the credentials, read from the files the config names. `Debug` prints
/// neither the secret nor the token (invariant 8).
#[derive(Clone)]
pub struct Ec2Secret {
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Ec2Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ec2Secret(..)")
    }
}

impl Ec2Secret {
    pub fn new(secret_access_key: String, session_token: Option<String>) -> Self {
        Ec2Secret { secret_access_key, session_token }
    }

    /// Reads `secret_access_key_file` (and `session_token_file`): each must be 0600 or
    /// stricter. The error names the file, never its content.
    pub fn load(cfg: &Ec2Config) -> Result<Ec2Secret, String> {
        let secret_access_key = read_secret(&cfg.secret_access_key_file)?;
        let session_token = cfg.session_token_file.as_deref().map(read_secret).transpose()?;
        Ok(Ec2Secret { secret_access_key, session_token })
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{}: group or others may read it (chmod 600 it)", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(value.to_string())
}

pub struct Ec2Provider {
    cfg: Ec2Config,
    client: aws_sdk_ec2::Client,
    rt: tokio::runtime::Runtime,
    /// Where calls go, for messages: `http://127.0.0.1:5000 (region us-east-1)`.
    target: String,
}

impl Ec2Provider {
    pub fn new(cfg: Ec2Config, secret: Ec2Secret) -> Result<Ec2Provider, ProviderError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ProviderError::Permanent(format!("ec2: start the async runtime: {e}")))?;
        let creds = Credentials::new(&cfg.access_key_id, secret.secret_access_key, secret.session_token, None, "hybrid-agent config");
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(cfg.call_timeout_secs.max(1)))
            .operation_timeout(Duration::from_secs(cfg.call_timeout_secs.max(1)))
            .build();
        let mut conf = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.0.clone()))
            .credentials_provider(creds)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(timeouts);
        if let Some(url) = &cfg.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        let endpoint = cfg.endpoint_url.clone().unwrap_or_else(|| format!("ec2.{}.amazonaws.com", cfg.region.0));
        let target = format!("{endpoint} (region {})", cfg.region.0);
        let client = aws_sdk_ec2::Client::from_conf(conf.build());
        Ok(Ec2Provider { cfg, client, rt, target })
    }

    /// One cheap call that needs the credentials (a describe by a tag nothing carries): at
    /// startup, so a wrong key, region or endpoint is one line then, not a warning per step.
    pub fn check(&self) -> Result<(), ProviderError> {
        let call = self.client.describe_instances().filters(tag_filter(TAG_OWNER, "hybrid-agent-startup-check")).max_results(5).send();
        self.block(call).map(|_| ()).map_err(|e| self.error("check credentials with a describe", e))
    }

    /// The user data script an instance was launched with (an operator's look at what a node
    /// got; the tests map moto's instances to `local` nodes with it). Holds the node's token.
    pub fn user_data_of(&self, instance_id: &str) -> Result<String, ProviderError> {
        let call = self.client.describe_instance_attribute().instance_id(instance_id).attribute(InstanceAttributeName::UserData).send();
        let out = self.block(call).map_err(|e| self.error(&format!("describe the user data of {instance_id}"), e))?;
        let text = out.user_data().and_then(|v| v.value()).unwrap_or_default();
        let unreadable = || ProviderError::Permanent(format!("user data of {instance_id}: not base64 text"));
        let mut bytes = aws_smithy_types::base64::decode(text).map_err(|_| unreadable())?;
        if !bytes.starts_with(b"#!") {
            // moto keeps the base64 text it was given and encodes it once more.
            bytes = std::str::from_utf8(&bytes).ok().and_then(|t| aws_smithy_types::base64::decode(t).ok()).ok_or_else(unreadable)?;
        }
        String::from_utf8(bytes).map_err(|_| unreadable())
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// One line: what was called, where, and what went wrong; transient or not.
    fn error<E, R>(&self, what: &str, e: SdkError<E, R>) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let at = format!("{what} at {}", self.target);
        let one_line = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match &e {
            SdkError::DispatchFailure(d) if d.is_timeout() => ProviderError::Transient(format!("{at}: timed out")),
            SdkError::DispatchFailure(_) => ProviderError::Transient(one_line(format!("{at}: cannot connect: {}", root_cause(&e)))),
            SdkError::TimeoutError(_) => ProviderError::Transient(format!("{at}: timed out")),
            SdkError::ServiceError(s) => {
                let (code, msg) = (s.err().code().unwrap_or("unknown"), s.err().message().unwrap_or(""));
                let line = one_line(format!("{at}: {code}: {msg}"));
                match code {
                    "AuthFailure" | "UnauthorizedOperation" | "InvalidClientTokenId" | "SignatureDoesNotMatch"
                    | "OptInRequired" | "Blocked" | "PendingVerification" => {
                        ProviderError::Permanent(one_line(format!("{at}: credentials refused ({code}): {msg}")))
                    }
                    c if is_capacity(c) => ProviderError::NoCapacity(line),
                    c if is_throttle(c) => ProviderError::Transient(line),
                    _ => ProviderError::Permanent(line),
                }
            }
            SdkError::ResponseError(r) => {
                ProviderError::Transient(one_line(format!("{at}: unreadable answer ({:?})", r.raw()).chars().take(300).collect()))
            }
            _ => ProviderError::Permanent(one_line(format!("{at}: {}", root_cause(&e)))),
        }
    }

    fn launch_new(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        let mut boot = req.bootstrap.clone();
        boot.metadata_endpoint = Some(self.cfg.metadata_endpoint.clone());
        let script = user_data(&boot, &self.cfg.bootstrap_path, &self.cfg.node_command)?;
        let tags = req.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect::<Vec<_>>();
        let mut call = self
            .client
            .run_instances()
            .image_id(&self.cfg.image_id)
            .instance_type(InstanceType::from(req.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(client_token(&req.idempotency_key))
            .user_data(aws_smithy_types::base64::encode(script))
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags.clone())).build())
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build())
            .set_subnet_id(self.cfg.subnet_id.clone())
            .set_key_name(self.cfg.key_name.clone());
        for sg in &self.cfg.security_group_ids {
            call = call.security_group_ids(sg);
        }
        if let Some(profile) = &self.cfg.iam_instance_profile {
            call = call.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
        }
        if self.cfg.spot {
            let spot = SpotMarketOptions::builder()
                .set_max_price(self.cfg.max_price.map(|p| format!("{p}")))
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .build();
            call = call.instance_market_options(InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(spot).build());
        }
        let out = self.block(call.send()).map_err(|e| self.error("run instances", e))?;
        let made: Vec<Instance> = out.instances().iter().map(instance_of).collect();
        if made.len() != 1 {
            // Asked for one (MinCount = MaxCount = 1): anything else is the endpoint's doing.
            warn!("ec2: asked for one instance, got {} ({:?})", made.len(), made.iter().map(|i| &i.id).collect::<Vec<_>>());
        }
        made.into_iter().next().ok_or_else(|| ProviderError::Transient(format!("run instances at {}: no instance in the answer", self.target)))
    }
}

fn is_capacity(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity" | "InsufficientCapacity" | "InsufficientHostCapacity" | "InsufficientReservedInstanceCapacity"
            | "MaxSpotInstanceCountExceeded" | "SpotMaxPriceTooLow" | "InstanceLimitExceeded" | "VcpuLimitExceeded"
    )
}

fn is_throttle(code: &str) -> bool {
    matches!(code, "RequestLimitExceeded" | "Throttling" | "ServiceUnavailable" | "Unavailable" | "InternalError" | "InternalFailure")
}

/// The innermost cause of an error (`Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

/// EC2's `ClientToken` (at most 64 ASCII characters): the key itself when it fits, else a
/// prefix of it and a hash of the whole.
pub fn client_token(key: &str) -> String {
    if key.len() <= 64 && key.is_ascii() {
        return key.to_string();
    }
    let h = key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let prefix: String = key.chars().filter(char::is_ascii).take(47).collect();
    format!("{prefix}-{h:016x}")
}

const BOOT_MARK: &str = "HYBRID_AGENT_BOOTSTRAP";
/// EC2's limit on user data (before base64).
const USER_DATA_MAX: usize = 16 * 1024;

/// The user data script: writes the bootstrap (umask 077) and starts the node.
pub fn user_data(boot: &Bootstrap, path: &Path, node_command: &str) -> Result<String, ProviderError> {
    let json = serde_json::to_string(boot).map_err(|e| ProviderError::Permanent(format!("encode the bootstrap: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let script = format!(
        "#!/bin/sh\n# hybrid-agent node {node}: written by the controller's ec2 provider\nset -e\numask 077\nmkdir -p '{dir}'\ncat > '{path}' <<'{BOOT_MARK}'\n{json}\n{BOOT_MARK}\nexec {node_command}\n",
        node = boot.node,
        dir = dir.display(),
        path = path.display(),
    );
    if script.len() > USER_DATA_MAX {
        return Err(ProviderError::Permanent(format!("user data of {} is {} bytes; EC2 takes at most {USER_DATA_MAX}", boot.node, script.len())));
    }
    Ok(script)
}

/// The bootstrap in a user data script made by [`user_data`].
pub fn bootstrap_from_user_data(script: &str) -> Option<Bootstrap> {
    let start = script.find(&format!("<<'{BOOT_MARK}'\n"))?;
    let json = script[start..].lines().nth(1)?;
    serde_json::from_str(json).ok()
}

fn timestamp(t: &aws_sdk_ec2::primitives::DateTime) -> Option<Timestamp> {
    Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok()
}

/// The time in a state transition reason like `User initiated (2026-12-01 16:34:24 GMT)`.
fn transition_time(reason: &str) -> Option<Timestamp> {
    let inner = reason.rsplit_once('(')?.1.trim_end_matches(')');
    let stamp = inner.trim_end_matches(" GMT").trim_end_matches(" UTC");
    let civil: jiff::civil::DateTime = stamp.parse().ok()?;
    civil.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

fn instance_of(i: &aws_sdk_ec2::types::Instance) -> Instance {
    let state = match i.state().and_then(|s| s.name()).map(|n| n.as_str()) {
        Some("running") => InstanceState::Running,
        Some("shutting-down" | "stopping" | "stopped") => InstanceState::Stopping,
        Some("terminated") => InstanceState::Terminated,
        _ => InstanceState::Pending,
    };
    let terminated_at =
        if state == InstanceState::Terminated { i.state_transition_reason().and_then(transition_time) } else { None };
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        state,
        tags: i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect(),
        launched_at: i.launch_time().and_then(timestamp),
        terminated_at,
    }
}

impl Provider for Ec2Provider {
    fn name(&self) -> &str {
        "ec2"
    }

    fn offers(&self) -> Result<Vec<Offer>, ProviderError> {
        Ok(self
            .cfg
            .offers
            .iter()
            .map(|o| Offer {
                instance_type: o.instance_type.clone(),
                gpus: o.gpus,
                price_per_hour: o.price_per_hour,
                spot: self.cfg.spot,
                gpu_type: o.gpu_type.clone(),
            })
            .collect())
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        // Our idempotency layer: the instance carrying this intent's tags is the launch.
        let mine: BTreeMap<String, String> =
            req.tags.iter().filter(|(k, _)| [TAG_OWNER, TAG_INTENT].contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        if mine.len() != 2 {
            return Err(ProviderError::Permanent(format!("launch {}: the request lacks the owner and intent tags", req.idempotency_key)));
        }
        let mut found = self.describe(&mine)?;
        found.sort_by_key(|i| i.launched_at);
        if let Some(first) = found.first() {
            if found.len() > 1 {
                warn!("ec2: {} instances carry intent {}; keeping the first, {}", found.len(), req.idempotency_key, first.id);
            }
            info!("ec2: instance {} already carries intent {}; adopted, not launched again", first.id, req.idempotency_key);
            return Ok(first.clone());
        }
        self.launch_new(req)
    }

    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        for _page in 0..1000 {
            let call = self.client.describe_instances().set_filters(Some(tags.iter().map(|(k, v)| tag_filter(k, v)).collect())).set_next_token(next.take());
            let page = self.block(call.send()).map_err(|e| self.error("describe instances", e))?;
            out.extend(page.reservations().iter().flat_map(|r| r.instances()).map(instance_of).filter(|i| has_tags(&i.tags, tags)));
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
        Err(ProviderError::Transient(format!("describe instances at {}: more than 1000 pages", self.target)))
    }

    fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let call = self.client.terminate_instances().instance_ids(instance_id).send();
        match self.block(call) {
            Ok(_) => Ok(()),
            // Gone long enough that EC2 forgot it: terminated (describe no longer lists it).
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(e) => Err(self.error(&format!("terminate {instance_id}"), e)),
        }
    }

    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError> {
        // Spot notices reach the instance only: its node agent polls them and reports.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_carries_the_bootstrap_and_reads_back() {
        let mut boot = super::super::conformance::request("o", "n0007").bootstrap;
        boot.metadata_endpoint = Some("http://169.254.169.254".into());
        let script = user_data(&boot, Path::new("/var/lib/hybrid-agent/bootstrap.json"), "hybrid-agent node").unwrap();
        assert!(script.starts_with("#!/bin/sh\n") && script.contains("umask 077") && script.ends_with("exec hybrid-agent node\n"));
        assert_eq!(bootstrap_from_user_data(&script), Some(boot));
        assert_eq!(bootstrap_from_user_data("#!/bin/sh\necho hi\n"), None);
    }

    #[test]
    fn client_tokens_fit_ec2s_limit_and_differ_per_key() {
        assert_eq!(client_token("hyctl-0123456789ab-n0001"), "hyctl-0123456789ab-n0001");
        let long_a = format!("{}-a", "x".repeat(80));
        let long_b = format!("{}-b", "x".repeat(80));
        assert!(client_token(&long_a).len() <= 64);
        assert_ne!(client_token(&long_a), client_token(&long_b));
    }

    #[test]
    fn termination_times_are_read_from_the_transition_reason() {
        let t = transition_time("User initiated (2026-12-01 16:34:24 UTC)").unwrap();
        assert_eq!(t.to_string(), "2026-12-01T16:34:24Z");
        assert_eq!(transition_time("User initiated (2026-12-01 16:34:24 GMT)"), Some(t));
        assert_eq!(transition_time(""), None);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Ec2Secret::new("wJalrXUtnFEMI-secret".into(), Some("session-token-xyz".into()));
        let shown = format!("{s:?}");
        assert!(!shown.contains("wJalr"), "{shown}");
        assert!(!shown.contains("session-token-xyz"));
    }
}
