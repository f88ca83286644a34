//! The `ec2` provider against an EC2-compatible endpoint: PyPI `moto[server]` on 127.0.0.1,
//! started by each test on a free port (tests/run.sh installs it; without `moto_server` on
//! PATH or in `MOTO_SERVER` the tests say SKIPPED).
//!
//! moto runs nothing, does not deduplicate `ClientToken` and ignores `MaxCount`: "same intent,
//! same instance, never two" is our layer's (describe by the intent's tags before a launch),
//! and is what is tested here. Every harness sets `AWS_EC2_METADATA_DISABLED=true`; the
//! provider has no default credential chain and so never contacts the real metadata service.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hybrid_agent::clock::{Clock, ManualClock};
use hybrid_agent::controller::{Budget, Controller, Settings};
use hybrid_agent::provider::ec2::{bootstrap_from_user_data, Ec2Config, Ec2Offer, Ec2Provider, Ec2Region, Ec2Secret};
use hybrid_agent::provider::conformance::{self, OnLaunch};
use hybrid_agent::provider::{Instance, InstanceState, LaunchRequest, Offer, Provider, ProviderError, TAG_OWNER};
use hybrid_agent::state::{Phase, StateStore};
use hybrid_agent::volume::fake::FakeHome;

/// What must never show in a log, a state file or the metrics (invariant 8).
const SECRET: &str = "h13ec2SecretKeyDoNotLogMe0123456789abcd";
const SESSION: &str = "h13ec2SessionTokenDoNotLogMeEither9876";

/// A moto server on a free 127.0.0.1 port; stopped (SIGTERM, reaped) on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the moto server this test started; then reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("moto_server")).find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts moto (`auth`: with IAM checks on every call, so unknown credentials are refused).
fn moto(dir: &Path, auth: bool) -> Option<Moto> {
    let Some(bin) = moto_binary() else {
        eprintln!("SKIPPED: needs moto_server (pip install 'moto[server]'; tests/run.sh does)");
        return None;
    };
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("moto-{port}.log"))).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if auth {
        cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
    }
    let moto = Moto { child: cmd.spawn().unwrap(), url: format!("http://127.0.0.1:{port}") };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "moto_server did not listen on {port} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

fn config(endpoint: &str, dir: &Path) -> Ec2Config {
    let secret_file = dir.join("aws-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    hybrid_agent::state::set_mode(&secret_file, 0o600).unwrap();
    Ec2Config {
        region: Ec2Region("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
        access_key_id: "AKIDh13ec2TEST".into(),
        secret_access_key_file: secret_file,
        session_token_file: None,
        image_id: "ami-0123456789abcdef0".into(),
        spot: true,
        max_price: Some(1.5),
        subnet_id: None,
        security_group_ids: vec![],
        key_name: None,
        iam_instance_profile: None,
        offers: vec![Ec2Offer { instance_type: "g5.xlarge".into(), gpus: 1, price_per_hour: Some(1.006), gpu_type: Some("a10g".into()) }],
        metadata_endpoint: "http://169.254.169.254".into(),
        node_command: "hybrid-agent node --config /etc/hybridfs/agent.toml".into(),
        bootstrap_path: "/var/lib/hybrid-agent/bootstrap.json".into(),
        call_timeout_secs: 120,
    }
}

/// A scratch folder, a moto server and a provider config for it (dropped in that order's
/// reverse: moto stops before the folder goes).
fn with_moto(auth: bool) -> Option<(tempfile::TempDir, Moto, Ec2Config)> {
    capture_logs();
    let scratch = tempfile::tempdir().unwrap();
    let m = moto(scratch.path(), auth)?;
    let cfg = config(&m.url, scratch.path());
    Some((scratch, m, cfg))
}

fn provider(cfg: &Ec2Config) -> Ec2Provider {
    Ec2Provider::new(cfg.clone(), Ec2Secret::new(SECRET.into(), Some(SESSION.into()))).unwrap()
}

fn owner_filter(owner: &str) -> BTreeMap<String, String> {
    [(TAG_OWNER.to_string(), owner.to_string())].into()
}

/// Every log line of this test binary (all tests), for the invariant-8 greps.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_ansi(false).with_writer(|| Capture).try_init();
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

#[test]
fn the_ec2_provider_keeps_the_provider_contract_against_moto() {
    let Some((_scratch, _m, cfg)) = with_moto(false) else { return };
    let p = provider(&cfg);
    p.check().unwrap();
    conformance::check(&p);
    assert_eq!(p.offers().unwrap()[0], Offer { instance_type: "g5.xlarge".into(), gpus: 1, price_per_hour: Some(1.006), spot: true, gpu_type: Some("a10g".into()) });
}

#[test]
fn a_launch_carries_tags_user_data_and_spot_and_a_restarted_provider_adopts_it() {
    let Some((_scratch, _m, cfg)) = with_moto(false) else { return };
    let owner = format!("ec2-adopt-{}", std::process::id());
    let mut req = conformance::request(&owner, "n0001");
    req.instance_type = "g5.xlarge".into();
    let first = provider(&cfg).launch(&req).unwrap();
    assert!(first.id.starts_with("i-") && first.instance_type == "g5.xlarge", "{first:?}");
    assert_eq!(first.tags, req.tags, "owner, intent, volume and expires tags");
    assert!(first.launched_at.is_some());
    // The user data is the bootstrap plus this provider's metadata endpoint.
    let p = provider(&cfg);
    let script = p.user_data_of(&first.id).unwrap();
    let boot = bootstrap_from_user_data(&script).expect("a bootstrap in the user data");
    assert_eq!(boot.metadata_endpoint.as_deref(), Some("http://169.254.169.254"));
    assert_eq!((boot.node.as_str(), boot.token.as_str()), ("n0001", req.bootstrap.token.as_str()));
    // A restart (a new provider, nothing in memory) with the same intent adopts the instance.
    let again = provider(&cfg).launch(&req).unwrap();
    assert_eq!(again.id, first.id, "same intent, same instance");
    let listed = p.describe(&owner_filter(&owner)).unwrap();
    assert_eq!(listed.len(), 1, "never two: {listed:?}");
    assert_eq!(listed[0].state, InstanceState::Running);
    // Another intent is another instance.
    let other = p.launch(&conformance::request(&owner, "n0002")).unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(p.describe(&owner_filter(&owner)).unwrap().len(), 2);
    // Terminate: idempotent, confirmed by describe, and an id EC2 forgot is not an error.
    p.terminate(&first.id).unwrap();
    p.terminate(&first.id).unwrap();
    p.terminate("i-0123456789abcdef0").unwrap();
    let after = p.describe(&owner_filter(&owner)).unwrap();
    let gone = after.iter().find(|i| i.id == first.id).unwrap();
    assert_eq!(gone.state, InstanceState::Terminated);
    assert!(gone.terminated_at.is_some(), "the termination time is read from the state transition reason");
}

/// A fault wrapper: the next `lose` launches start their instance and then fail, as if the
/// answer was lost on the way back; `calls` counts the launches.
fn losing_answers(inner: Ec2Provider, lose: Arc<AtomicU32>, calls: Arc<AtomicU32>) -> Arc<dyn Provider> {
    Arc::new(OnLaunch {
        inner,
        on_launch: move |p: &Ec2Provider, req: &LaunchRequest| {
            calls.fetch_add(1, Ordering::Relaxed);
            let made = p.launch(req)?;
            if lose.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Err(ProviderError::Transient(format!("launch: connection reset before the answer (instance {} made)", made.id)));
            }
            Ok(made)
        },
    })
}

fn settings(owner: &str) -> Settings {
    let mut s = Settings { instance_type: Some("g5.xlarge".into()), ..Settings::for_tests(owner) };
    s.offers.allow_spot = true;
    s
}

#[test]
fn crash_safety_a_lost_launch_answer_and_a_controller_restart_leave_one_instance_per_intent() {
    let Some((scratch, _m, cfg)) = with_moto(false) else { return };
    let owner = format!("ec2-lost-{}", std::process::id());
    let clock = ManualClock::new("2026-03-02T10:00:00Z".parse().unwrap());
    let state_dir = scratch.path().join("state");
    let open = |p: Arc<dyn Provider>| {
        Controller::open(settings(&owner), StateStore::open(&state_dir).unwrap(), p, Arc::new(FakeHome::default()), Arc::new(clock.clone())).unwrap()
    };
    // Provider level: the answer of the first launch is lost; the retry with the same key
    // finds the instance by its intent tag.
    let (lose, calls) = (Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(0)));
    let faulty = losing_answers(provider(&cfg), lose.clone(), calls.clone());
    let req = conformance::request(&owner, "n0100");
    assert!(faulty.launch(&req).unwrap_err().is_transient());
    let retried = faulty.launch(&req).unwrap();
    let mine = |intent: &str| {
        let tags: BTreeMap<String, String> = [(TAG_OWNER.to_string(), owner.clone()), ("intent".to_string(), intent.to_string())].into();
        faulty.describe(&tags).unwrap()
    };
    assert_eq!(mine("n0100").iter().map(|i| &i.id).collect::<Vec<_>>(), [&retried.id], "never two");

    // Controller level: rent; the answer is lost; the intent stays and the next step adopts.
    lose.store(1, Ordering::Relaxed);
    let mut c = open(faulty.clone());
    let intent = c.rent(clock.now()).unwrap().expect("an intent");
    assert_eq!(c.state().node(&intent).unwrap().phase, Phase::Intended, "the launch failed as far as the controller knows");
    c.step(Some(95.0)).unwrap();
    let rec = c.state().node(&intent).unwrap().clone();
    assert_eq!(rec.phase, Phase::Running);
    let made = mine(&intent);
    assert_eq!(made.len(), 1, "one instance for the intent: {made:?}");
    assert_eq!(rec.instance_id.as_deref(), Some(made[0].id.as_str()));
    drop(c);

    // A restart: a new provider and controller from the same state dir adopt, launch nothing.
    let calls = calls.load(Ordering::Relaxed);
    let fresh_calls = Arc::new(AtomicU32::new(0));
    let fresh = losing_answers(provider(&cfg), Arc::default(), fresh_calls.clone());
    let mut c = open(fresh.clone());
    c.step(Some(60.0)).unwrap();
    assert_eq!(fresh_calls.load(Ordering::Relaxed), 0, "nothing launched after the restart ({calls} launches before)");
    assert_eq!(c.state().node(&intent).unwrap().instance_id, rec.instance_id);
    assert_eq!(mine(&intent).len(), 1);
    // Released: terminated in EC2, confirmed by the next describe.
    c.release(&intent).unwrap();
    c.step(Some(60.0)).unwrap();
    assert_eq!(c.state().node(&intent).unwrap().phase, Phase::Terminated);
    assert_eq!(mine(&intent)[0].state, InstanceState::Terminated);

    // Invariant 8: the secret and the session token are in no log line, state file or metric.
    let state = std::fs::read_to_string(state_dir.join("state.json")).unwrap();
    for (what, text) in [("logs", logs()), ("state.json", state), ("metrics", c.metrics())] {
        assert!(!text.contains(SECRET) && !text.contains(SESSION), "a secret in the {what}");
    }
}

/// Leaks and the budget against moto, on the agent's clock set to the real time (moto stamps
/// each launch with it: a leak's age and a node's hours come from those stamps).
#[test]
fn against_moto_a_stray_instance_is_found_within_one_loop_after_the_grace_and_the_budget_refuses_the_launch_past_it() {
    let Some((scratch, _m, cfg)) = with_moto(false) else { return };
    let owner = format!("ec2-leak-{}", std::process::id());
    let now = jiff::Timestamp::now();
    let clock = ManualClock::new(now);
    let at = |h: i64| now.checked_add(jiff::SignedDuration::from_hours(h)).unwrap().to_zoned(jiff::tz::TimeZone::UTC).time();
    let mut s = settings(&owner);
    // The burst window opened an hour ago and closes in 8 h; the merge window is later.
    s.burst = hybrid_agent::window::DailyWindow::new(at(-1), at(8), jiff::tz::TimeZone::UTC);
    s.merge = hybrid_agent::window::DailyWindow::new(at(9), at(10), jiff::tz::TimeZone::UTC);
    s.lease = Duration::from_secs(4 * 3600);
    // g5.xlarge at 1.006/h reserves (8 h left + 1 h drain) x 1.006 = 9.05: one fits in 15.00.
    s.budget = Some(Budget { per_day: 15.0, per_month: None, drain_time: Duration::from_secs(3600) });
    let state_dir = scratch.path().join("state");
    let p = Arc::new(provider(&cfg));
    let open = |s: Settings| Controller::open(s, StateStore::open(&state_dir).unwrap(), p.clone(), Arc::new(FakeHome::default()), Arc::new(clock.clone())).unwrap();
    let mut c = open(s.clone());
    let node = c.rent_now().unwrap().expect("the first launch fits the budget");
    let why = c.rent_now().unwrap().expect_err("a second would reserve 18.11 > 15.00");
    assert!(why.starts_with("budget:") && why.contains("budget.per_day 15.00"), "{why}");
    let ours = p.describe(&owner_filter(&owner)).unwrap();
    assert_eq!(ours.len(), 1, "the refused launch made no instance: {ours:?}");

    // A crash lost this one's record: our owner tag, an intent the state does not know.
    let stray = p.launch(&conformance::request(&owner, "n0999")).unwrap();
    c.step(Some(60.0)).unwrap();
    assert!(c.leaks().is_empty(), "younger than the grace period: {:?}", c.leaks());
    clock.advance(Duration::from_secs(900));
    c.step(Some(60.0)).unwrap();
    let leaks = c.leaks();
    assert_eq!(leaks.iter().map(|l| l.instance_id.as_str()).collect::<Vec<_>>(), [stray.id.as_str()], "found within one loop after the grace");
    assert_eq!(leaks[0].why, "not in the state");
    assert_eq!(c.state().node(&node).unwrap().phase, Phase::Running, "our own node is not a leak");
    let state_of = |id: &str| p.describe(&owner_filter(&owner)).unwrap().into_iter().find(|i| i.id == id).map(|i| i.state);
    assert!(matches!(state_of(&stray.id), Some(InstanceState::Pending | InstanceState::Running)), "leaks.terminate = false only reports");

    // leaks.terminate = true: the stray is terminated in EC2 at the next loop, by id; ours stays.
    s.leaks.terminate = true;
    drop(c);
    let mut c = open(s);
    c.step(Some(60.0)).unwrap();
    assert_eq!(state_of(&stray.id), Some(InstanceState::Terminated));
    let mine = c.state().node(&node).unwrap().instance_id.clone().unwrap();
    assert!(matches!(state_of(&mine), Some(InstanceState::Pending | InstanceState::Running)), "our own node stays");
    c.release(&node).unwrap();
    c.step(Some(60.0)).unwrap();
    assert_eq!(state_of(&mine), Some(InstanceState::Terminated));
}

/// One line (no newline inside), naming `needles`, and no secret.
fn one_clear_line(e: &str, needles: &[&str]) {
    assert!(!e.trim_end().contains('\n'), "not one line: {e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} missing from: {e}");
    }
    assert!(!e.contains(SECRET) && !e.contains(SESSION), "a secret in: {e}");
}

#[test]
fn a_stopped_endpoint_bad_credentials_and_an_unknown_region_each_give_one_clear_line() {
    let Some((scratch, m, cfg)) = with_moto(true) else { return };
    // Bad credentials: moto checks them (INITIAL_NO_AUTH_ACTION_COUNT=0) and knows none of ours.
    let e = provider(&cfg).check().unwrap_err();
    assert!(!e.is_transient(), "{e}");
    one_clear_line(&e.to_string(), &["credentials refused", "AuthFailure", &m.url]);
    // A stopped endpoint: nothing listens there.
    let stopped = format!("http://127.0.0.1:{}", free_port());
    let e = provider(&config(&stopped, scratch.path())).check().unwrap_err();
    assert!(e.is_transient(), "{e}");
    one_clear_line(&e.to_string(), &["cannot connect", &stopped, "us-east-1"]);
    // An unknown region: refused while the config is read, with the file, line and key.
    let file = scratch.path().join("agent.toml");
    let text = format!(
        "role = \"controller\"\nstate_dir = \"{d}/state\"\n[provider]\nkind = \"ec2\"\n[provider.ec2]\nregion = \"xx-atlantis-1\"\naccess_key_id = \"AKID\"\nsecret_access_key_file = \"{d}/aws-secret\"\nimage_id = \"ami-1\"\noffers = [{{ instance_type = \"g5.xlarge\" }}]\n",
        d = scratch.path().display()
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hybrid-agent")).arg("check-config").arg(&file).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    one_clear_line(&err, &["agent.toml:6", "provider.ec2.region", "xx-atlantis-1", "not a known AWS region"]);
    // The controller itself, pointed at the stopped endpoint, stops with one line naming it.
    let (ms, md) = merge_later();
    let ctl = ec2_controller_config(scratch.path(), &common::Cfg::fast((&ms, &md), "10.238"), &stopped, "");
    let out = Command::new(env!("CARGO_BIN_EXE_hybrid-agent")).args(["controller", "--config"]).arg(&ctl).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    one_clear_line(last, &["hybrid-agent: error:", "cannot connect", &stopped]);
    assert!(!err.contains(SECRET), "{err}");
    // A secret file others may read is refused before any call.
    hybrid_agent::state::set_mode(&scratch.path().join("aws-secret"), 0o644).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hybrid-agent")).args(["controller", "--config"]).arg(&ctl).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    one_clear_line(err.lines().last().unwrap_or_default(), &["aws-secret", "chmod 600"]);
    assert!(!logs().contains(SECRET) && !logs().contains(SESSION), "a secret in the logs");
}

/// A metadata service for one node (IMDSv2): a token on PUT, then 404 until `notice` is set,
/// then the spot notice. Serves until the test ends (the thread dies with the process).
fn serve_imds(addr: &str, notice: Arc<Mutex<Option<String>>>, hits: Arc<AtomicU32>) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().take(10_000) {
            let Ok(mut s) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 && std::io::Read::read(&mut s, &mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let req = String::from_utf8_lossy(&head).into_owned();
            hits.fetch_add(1, Ordering::Relaxed);
            let (status, body) = if req.starts_with("PUT /latest/api/token ") {
                ("200 OK", "imds-session-token".to_string())
            } else if !req.contains("X-aws-ec2-metadata-token: imds-session-token\r\n") {
                ("401 Unauthorized", String::new())
            } else if let Some(time) = notice.lock().unwrap().clone() {
                ("200 OK", format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}"))
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
}

/// The merge window, hours from now (start, deadline as HH:MM UTC).
fn merge_later() -> (String, String) {
    let later = |mins: i64| jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_mins(mins)).unwrap().strftime("%H:%M").to_string();
    (later(600), later(630))
}

/// DIR/agent.toml: `common::write_config`'s controller, with kind "ec2" at `endpoint` (the
/// secret in DIR/aws-secret) and `extra` keys for `[provider.ec2]`.
fn ec2_controller_config(dir: &Path, c: &common::Cfg, endpoint: &str, extra: &str) -> PathBuf {
    let path = common::write_config(dir, "agent.toml", c);
    let text = std::fs::read_to_string(&path).unwrap();
    let head = &text[..text.find("[provider]").unwrap()];
    let ec2 = format!(
        "[provider]\nkind = \"ec2\"\ninstance_type = \"g5.xlarge\"\n[provider.ec2]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\naccess_key_id = \"AKIDh13ec2TEST\"\nsecret_access_key_file = \"{d}/aws-secret\"\nimage_id = \"ami-0123456789abcdef0\"\nspot = true\noffers = [{{ instance_type = \"g5.xlarge\", gpus = 1, price_per_hour = 1.006 }}]\n{extra}[provider.offers]\nallow_spot = true\n",
        d = dir.display()
    );
    std::fs::write(&path, format!("{head}{ec2}")).unwrap();
    path
}

static IMDS_PORT: AtomicU32 = AtomicU32::new(0);

/// The instance moto "launched" for `intent`, once there is one.
fn instance_for(p: &Ec2Provider, owner: &str, intent: &str) -> Option<Instance> {
    let tags: BTreeMap<String, String> = [(TAG_OWNER.to_string(), owner.to_string()), ("intent".to_string(), intent.to_string())].into();
    p.describe(&tags).ok()?.into_iter().next()
}

#[test]
fn no_lost_writes_a_spot_notice_pushes_the_nodes_last_write_before_it_goes_and_the_node_is_replaced() {
    let Some(ctl) = common::can_run() else { return };
    let Some((scratch, m, cfg)) = with_moto(false) else { return };
    let dir = scratch.path();
    let ec2 = provider(&cfg);
    common::ctl_ok(&ctl, dir, &["format", "main", "--store", &format!("file://{}/store", dir.display())]);
    std::fs::write(dir.join("load"), "95\n").unwrap();
    let nodes = dir.join("nodes");
    let _sweeper = common::Sweeper(nodes.clone());
    IMDS_PORT.store(free_port() as u32, Ordering::Relaxed);
    let (ms, md) = merge_later();
    let imds = format!("metadata_endpoint = \"http://{{host_addr}}:{}\"\n", IMDS_PORT.load(Ordering::Relaxed));
    let controller = common::start(&ctl, dir, &ec2_controller_config(dir, &common::Cfg::fast((&ms, &md), "10.238"), &m.url, &imds), &[]);
    let store = StateStore::open(&dir.join("state")).unwrap();

    // The controller rents n0001 in moto; the test makes that instance a real `local` node,
    // started from the instance's own user data.
    let mut owner = String::new();
    common::eventually("the controller wrote its owner tag", 30, || {
        owner = std::fs::read_to_string(dir.join("state/owner")).unwrap_or_default().trim().to_string();
        !owner.is_empty()
    });
    let mut inst = None;
    common::eventually("an instance for n0001 in moto", 60, || {
        inst = instance_for(&ec2, &owner, "n0001");
        inst.is_some()
    });
    let inst = inst.unwrap();
    let boot = bootstrap_from_user_data(&ec2.user_data_of(&inst.id).unwrap()).expect("the bootstrap in the user data");
    assert_eq!(boot.metadata_endpoint.as_deref(), Some(format!("http://{{host_addr}}:{}", IMDS_PORT.load(Ordering::Relaxed)).as_str()));
    let mut local_cfg = hybrid_agent::provider::local::LocalConfig::with_root(nodes.clone());
    local_cfg.subnet = "10.238".into();
    local_cfg.push_every = Some("1h".into()); // only the notice pushes the last write
    local_cfg.stop_grace_secs = 30;
    local_cfg.node_command = Some(vec![env!("CARGO_BIN_EXE_hybrid-agent").into(), "node".into(), "--config".into(), "{config}".into()]);
    local_cfg.node_env = [("HYBRIDCTL".to_string(), ctl.display().to_string()), ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string())].into();
    let local = hybrid_agent::provider::local::LocalProvider::new(local_cfg, &nodes, Arc::new(hybrid_agent::clock::SystemClock)).unwrap();
    let req = LaunchRequest { idempotency_key: inst.id.clone(), instance_type: "local".into(), tags: inst.tags.clone(), bootstrap: boot };
    let node = local.launch(&req).unwrap();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(local.dir(&node.id).join("instance.json")).unwrap()).unwrap();
    let host_addr = record["host_addr"].as_str().unwrap().to_string();
    let (notice, hits) = (Arc::new(Mutex::new(None)), Arc::new(AtomicU32::new(0)));
    serve_imds(&format!("{host_addr}:{}", IMDS_PORT.load(Ordering::Relaxed)), notice.clone(), hits.clone());

    let mnt = local.dir(&node.id).join("mnt");
    let report = || store.load().unwrap().node("n0001").and_then(|n| n.last_report.clone());
    common::eventually("the node mounted the volume and reported its first push", 90, || {
        common::mounted(&mnt) && report().is_some_and(|r| r.head.is_some())
    });
    common::eventually("the node polls its metadata endpoint", 20, || hits.load(Ordering::Relaxed) >= 2);
    // The last write before the notice: reported unpushed (the node pushes only hourly).
    let ckpt: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    common::write_synced(&mnt.join("ckpt-last.pt"), &ckpt);
    common::eventually("the checkpoint is reported unpushed", 40, || report().is_some_and(|r| r.unpushed_bytes >= ckpt.len() as u64));

    // The notice: the node pushes at once, reports it, unmounts and exits.
    let reclaim = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_mins(2)).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    *notice.lock().unwrap() = Some(reclaim.clone());
    common::eventually("the node reports the notice, drained", 40, || {
        report().is_some_and(|r| r.interruption == Some(reclaim.parse().unwrap()) && r.drained && r.unpushed_bytes == 0)
    });
    common::eventually("the controller terminates n0001 in moto", 40, || {
        instance_for(&ec2, &owner, "n0001").is_some_and(|i| i.state == InstanceState::Terminated)
    });
    common::eventually("the controller records n0001 terminated", 30, || store.load().unwrap().node("n0001").is_some_and(|n| n.phase == Phase::Terminated));
    let rec = store.load().unwrap().node("n0001").cloned().unwrap();
    assert!(rec.loss.is_none(), "nothing lost: {:?}", rec.loss);
    // The mapped local node is gone too (it exited by itself; describe cleans up).
    local.terminate(&node.id).unwrap();
    common::eventually("the local node is cleaned up", 40, || {
        local.describe(&owner_filter(&owner)).unwrap().iter().all(|i| i.state == InstanceState::Terminated)
    });
    assert!(!common::mounted(&mnt));
    // The window still open and max_nodes free: a replacement is rented at once.
    common::eventually("a replacement n0002 is launched in moto", 30, || instance_for(&ec2, &owner, "n0002").is_some());

    // Invariant 8 across the real processes: no secret in the logs, state or metrics.
    let admin = std::fs::read_to_string(dir.join("token")).unwrap();
    let sock = format!("unix:{}", dir.join("state/api.sock").display());
    let metrics = hybrid_agent::api::call(&sock, "GET", "/metrics", Some(admin.trim()), None).unwrap();
    drop(controller);
    let texts = [
        ("controller.log", std::fs::read_to_string(dir.join("controller.log")).unwrap()),
        ("node.log", std::fs::read_to_string(local.dir(&node.id).join("node.log")).unwrap()),
        ("state.json", std::fs::read_to_string(dir.join("state/state.json")).unwrap()),
        ("metrics", format!("{:?}", metrics.body)),
        ("test logs", logs()),
    ];
    for (what, text) in &texts {
        assert!(!text.contains(SECRET) && !text.contains(SESSION), "a secret in {what}");
    }
    assert!(texts[1].1.contains("spot interruption notice"), "the node says why it stopped: {}", texts[1].1);

    // The branch head in the store holds the node's last write: merged home, byte for byte.
    common::ctl_ok(&ctl, dir, &["merge", "burst-n0001"]);
    let home_mnt = dir.join("home-mnt");
    std::fs::create_dir_all(&home_mnt).unwrap();
    let hm = home_mnt.display().to_string();
    common::ctl_ok(&ctl, dir, &["mount", "main", &hm, "-d"]);
    let got = std::fs::read(home_mnt.join("ckpt-last.pt"));
    common::ctl_ok(&ctl, dir, &["umount", &hm]);
    assert!(got.unwrap() == ckpt, "the write made just before the notice reached the branch");
}
