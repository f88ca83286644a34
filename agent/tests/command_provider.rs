//! The controller with the `command` provider running the example program
//! `agent/examples/command/json-file-provider` (instances are records in a JSON file; nothing
//! runs), over its HTTP API on a unix socket as `hybridctl` calls it: launch, describe and
//! terminate; the cheapest offer within the constraints; no capacity falls through to the next
//! offer; the budget refuses the launch that would exceed it (409 with the reason) and allows
//! the one that fits; an instance tagged by us but unknown to the state is found and reported
//! within one loop, and terminated when configured. Needs python3.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybrid_agent::api::{self, Listener};
use hybrid_agent::clock::{Clock, ManualClock};
use hybrid_agent::controller::{apply_queued, Budget, Controller, Desk, Settings};
use hybrid_agent::config::Dur;
use hybrid_agent::provider::command::{CommandConfig, CommandProvider};
use hybrid_agent::provider::{conformance, InstanceState, Provider, TAG_OWNER};
use hybrid_agent::state::{Phase, StateStore};
use hybrid_agent::volume::fake::FakeHome;

mod common;

const OWNER: &str = "cmd-test";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn can_run() -> bool {
    let ok = std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: the example command provider needs python3");
    }
    ok
}

fn example() -> String {
    format!("{}/examples/command/json-file-provider", env!("CARGO_MANIFEST_DIR"))
}

fn provider(dir: &Path, clock: &ManualClock, env: &[(&str, &str)]) -> CommandProvider {
    let mut cfg = CommandConfig::new(&example());
    cfg.timeout = Dur(Duration::from_secs(30));
    cfg.env.insert("HYBRID_PROVIDER_FILE".into(), dir.join("instances.json").display().to_string());
    for (k, v) in env {
        cfg.env.insert(k.to_string(), v.to_string());
    }
    CommandProvider::new(cfg, Arc::new(clock.clone()))
}

fn settings() -> Settings {
    let mut s = Settings::for_tests(OWNER);
    s.rule.max_nodes = 5;
    s.lease = Duration::from_secs(4 * 3600); // the example's nodes never report: not lost meanwhile
    s
}

/// A controller on the example provider, with its API served on `dir/api.sock`.
struct Running {
    ctrl: Arc<Mutex<Controller>>,
    sock: String,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    /// Applies what the API queues (rent, release) between the test's steps.
    pump: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(dir: &Path, s: Settings, p: CommandProvider, clock: &ManualClock) -> Running {
        let store = StateStore::open(&dir.join("state")).unwrap();
        let mut c = Controller::open(s, store, Arc::new(p), Arc::new(FakeHome::default()), Arc::new(clock.clone())).unwrap();
        let desk = Desk::attach(&mut c);
        let ctrl = Arc::new(Mutex::new(c));
        let sock = format!("unix:{}", dir.join("api.sock").display());
        let stop = Arc::new(AtomicBool::new(false));
        let d = desk.clone();
        let handler: api::Handler = Arc::new(move |req: &api::Request| api::route(&d, TOKEN, req));
        let server = api::serve(Listener::bind(&sock).unwrap(), handler, stop.clone()).unwrap();
        let (c, s) = (ctrl.clone(), stop.clone());
        let pump = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                apply_queued(&mut c.lock().unwrap(), &desk, std::time::Instant::now());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Running { ctrl, sock, stop, server: Some(server), pump: Some(pump) }
    }

    fn call(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let r = api::call(&self.sock, method, path, Some(TOKEN), None).unwrap();
        (r.status, r.body)
    }

    fn step(&self) {
        self.ctrl.lock().unwrap().step(Some(70.0)).unwrap();
    }

    fn node(&self, n: &str) -> hybrid_agent::state::NodeRecord {
        self.ctrl.lock().unwrap().state().node(n).unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        if let Some(p) = self.pump.take() {
            let _ = p.join();
        }
    }
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

#[test]
fn launch_describe_terminate_cheapest_first_and_no_capacity_falls_through() {
    if !can_run() {
        return;
    }
    let (_keep, dir) = scratch();
    let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
    // The example's offers: gpu.spot 0.30 (spot), gpu.small 0.80, gpu.large 12.00.
    let run = Running::start(&dir, settings(), provider(&dir, &clock, &[]), &clock);
    let (status, body) = run.call("POST", "/v1/nodes/rent");
    assert_eq!(status, 200, "{body}");
    let a = body["node"].as_str().unwrap().to_string();
    let rec = run.node(&a);
    assert_eq!((rec.instance_type.as_str(), rec.price_per_hour, rec.phase), ("gpu.small", 0.8, Phase::Running), "cheapest non-spot");
    let id = rec.instance_id.clone().unwrap();

    // Describe by our owner tag shows it, launched at the agent's time.
    let p = provider(&dir, &clock, &[]);
    let ours: BTreeMap<String, String> = [(TAG_OWNER.to_string(), OWNER.to_string())].into();
    let listed = p.describe(&ours).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].state), (id.as_str(), InstanceState::Running));
    assert_eq!(listed[0].launched_at, Some(clock.now()));

    // Release: terminate, confirmed by the next step's describe.
    clock.advance(Duration::from_secs(1800));
    let (status, body) = run.call("POST", &format!("/v1/nodes/{a}/release"));
    assert_eq!(status, 200, "{body}");
    run.step();
    let rec = run.node(&a);
    assert_eq!(rec.phase, Phase::Terminated);
    assert_eq!(rec.stopped_at, Some(clock.now()), "stop as the provider reports it");
    assert_eq!(p.describe(&ours).unwrap()[0].state, InstanceState::Terminated);
    let (_, cost) = run.call("GET", "/v1/cost");
    assert_eq!(cost[0]["cost"].as_f64(), Some(0.4), "half an hour at 0.80");
    drop(run);

    // No capacity for gpu.small: the launch falls through to gpu.large; the refused offer
    // started nothing.
    let run = Running::start(&dir, settings(), provider(&dir, &clock, &[("HYBRID_PROVIDER_NO_CAPACITY", "gpu.small")]), &clock);
    let (status, body) = run.call("POST", "/v1/nodes/rent");
    assert_eq!(status, 200, "{body}");
    let b = run.node(body["node"].as_str().unwrap());
    assert_eq!(b.instance_type, "gpu.large");
    assert_eq!(p.describe(&ours).unwrap().len(), 2, "one instance per launch that started one");
    // Both offers out of capacity: 409, saying so, and no instance.
    drop(run);
    let run = Running::start(&dir, settings(), provider(&dir, &clock, &[("HYBRID_PROVIDER_NO_CAPACITY", "gpu.small,gpu.large")]), &clock);
    let (status, body) = run.call("POST", "/v1/nodes/rent");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no capacity"), "{body}");
    assert_eq!(p.describe(&ours).unwrap().len(), 2);
}

#[test]
fn the_budget_refuses_the_launch_that_would_exceed_it_and_allows_the_one_that_fits() {
    if !can_run() {
        return;
    }
    let (_keep, dir) = scratch();
    let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
    let mut s = settings();
    // gpu.small at 0.80/h from 09:00: (8 h to 17:00 + 2 h drain) x 0.80 = 8.00 reserved.
    s.budget = Some(Budget { per_day: 12.0, per_month: None, drain_time: Duration::from_secs(7200) });
    let run = Running::start(&dir, s, provider(&dir, &clock, &[]), &clock);
    assert_eq!(run.call("POST", "/v1/nodes/rent").0, 200);
    let (status, body) = run.call("POST", "/v1/nodes/rent");
    assert_eq!(status, 409, "8.00 + 8.00 > 12.00: {body}");
    let why = body["error"].as_str().unwrap();
    assert!(why.starts_with("budget: gpu.small at 0.80 USD/h would reserve 8.00 USD") && why.contains("budget.per_day 12.00"), "{why}");
    let (_, budget) = run.call("GET", "/v1/budget");
    assert_eq!((budget["day_committed"].as_f64(), budget["refusals"].as_u64()), (Some(8.0), Some(1)), "{budget}");
    assert_eq!(budget["last_refusal"]["reason"].as_str(), Some(why));
    let (_, metrics) = run.call("GET", "/metrics");
    assert!(metrics.as_str().unwrap().contains("hybrid_agent_rent_refusals_total 1\n"), "{metrics}");
    // At 14:00 the rest of the window costs (3 + 2) x 0.80 = 4.00: 8.00 + 4.00 fits 12.00.
    clock.set("2026-03-02T14:00:00Z".parse().unwrap());
    let (status, body) = run.call("POST", "/v1/nodes/rent");
    assert_eq!(status, 200, "{body}");
    assert_eq!(run.call("GET", "/v1/budget").1["day_committed"].as_f64(), Some(12.0));
}

#[test]
fn an_instance_tagged_by_us_but_unknown_to_the_state_is_reported_within_one_loop_and_terminated_when_configured() {
    if !can_run() {
        return;
    }
    let (_keep, dir) = scratch();
    let clock = ManualClock::new("2026-03-02T09:00:00Z".parse().unwrap());
    let p = provider(&dir, &clock, &[]);
    // Launched for us by a controller that crashed before it saved: its state knows nothing.
    let mut req = conformance::request(OWNER, "n0042");
    req.instance_type = "gpu.small".into();
    let stray = p.launch(&req).unwrap();
    clock.advance(Duration::from_secs(3600));
    let run = Running::start(&dir, settings(), provider(&dir, &clock, &[]), &clock);
    run.step();
    let (_, leaks) = run.call("GET", "/v1/leaks");
    assert_eq!(leaks.as_array().unwrap().len(), 1, "{leaks}");
    assert_eq!(leaks[0]["instance_id"].as_str(), Some(stray.id.as_str()));
    assert_eq!(leaks[0]["why"].as_str(), Some("not in the state"));
    let (_, metrics) = run.call("GET", "/metrics");
    assert!(metrics.as_str().unwrap().contains("hybrid_agent_leaked_instances 1\n"), "{metrics}");
    let ours: BTreeMap<String, String> = [(TAG_OWNER.to_string(), OWNER.to_string())].into();
    assert_eq!(p.describe(&ours).unwrap()[0].state, InstanceState::Running, "reported only");
    drop(run);

    let mut s = settings();
    s.leaks.terminate = true;
    let run = Running::start(&dir, s, provider(&dir, &clock, &[]), &clock);
    run.step();
    assert_eq!(p.describe(&ours).unwrap()[0].state, InstanceState::Terminated, "terminated within one loop");
    run.step();
    assert_eq!(run.call("GET", "/v1/leaks").1.as_array().map(Vec::len), Some(0));
}

/// The real binary, configured with `kind = "command"`, `[budget]` and `[leaks]`: the config
/// reaches the controller (the example program is called, the budget's limit is served, a
/// stray instance is found at the first step and terminated).
#[test]
fn the_controller_binary_runs_the_command_provider_from_its_config() {
    if !can_run() {
        return;
    }
    let (_keep, dir) = scratch();
    let file = dir.join("instances.json");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("owner"), "cmd-bin-test").unwrap();
    // A stray instance with this controller's owner tag, launched an hour before agent time.
    let clock = ManualClock::new("2026-03-02T08:00:00Z".parse().unwrap());
    let mut req = conformance::request("cmd-bin-test", "n0077");
    req.instance_type = "gpu.small".into();
    let stray = provider(&dir, &clock, &[]).launch(&req).unwrap();
    let cfg = common::Cfg {
        every: "1m",
        up: (90, "10m"),
        down: None,
        burst: ("08:00", "17:00", "UTC"),
        max_nodes: 1,
        lease: "4h",
        merge: ("17:30", "07:30", "UTC"),
        subnet: "10.250",
        stop_grace_secs: 5,
        node: None,
    };
    let config = common::write_config(&dir, "agent.toml", &cfg);
    let text = std::fs::read_to_string(&config).unwrap();
    let (common_part, _local) = text.split_once("[provider]").unwrap();
    let provider_part = format!(
        r#"[provider]
kind = "command"
[provider.command]
program = "{prog}"
timeout = "30s"
env = {{ HYBRID_PROVIDER_FILE = "{file}" }}
[provider.offers]
max_price_per_hour = 5.0
[budget]
per_day = 42.5
[leaks]
grace = "10m"
terminate = true
"#,
        prog = example(),
        file = file.display()
    );
    std::fs::write(&config, format!("{common_part}{provider_part}")).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_hybrid-agent")).arg("check-config").arg(&config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let _controller = common::start(Path::new("/nonexistent/hybridctl"), &dir, &config, &["--clock-start", "2026-03-02T09:00:00Z"]);
    let sock = format!("unix:{}", state.join("api.sock").display());
    let token_file = dir.join("token");
    let ours: BTreeMap<String, String> = [(TAG_OWNER.to_string(), "cmd-bin-test".to_string())].into();
    let p = provider(&dir, &clock, &[]);
    common::eventually("the controller terminates the stray instance", 30, || {
        p.describe(&ours).unwrap()[0].state == InstanceState::Terminated
    });
    let log = std::fs::read_to_string(dir.join("controller.log")).unwrap();
    assert!(log.contains(&format!("leak: instance {} (gpu.small) carries our owner tag: not in the state; terminating it", stray.id)), "{log}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let budget = api::call(&sock, "GET", "/v1/budget", Some(token.trim()), None).unwrap();
    assert_eq!(budget.body["per_day"].as_f64(), Some(42.5), "{:?}", budget.body);
    let metrics = api::call(&sock, "GET", "/metrics", Some(token.trim()), None).unwrap();
    assert!(metrics.body.as_str().unwrap().contains("hybrid_agent_leaked_instances_terminated_total 1\n"), "{:?}", metrics.body);
}
