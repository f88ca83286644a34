//! The controller's dashboard, in process (memory provider, fake volumes, manual clock) and
//! over its real HTTP server: the login code and session cookie, and the page as a real
//! headless browser (Debian's `chromium`) renders it after a simulated day: node names,
//! their cost, the night's conflicts and a chart with one point per sample.
//!
//! `HYBRIDFS_DASHBOARD_SCREENSHOT=doc/dashboard.png` also writes a screenshot of the page.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The browser helpers are the node tests' (only std: the agent links no node crate).
#[path = "../../tests/harness/browser.rs"]
#[allow(dead_code)]
mod browser;
use browser::{browse, chromium, svg, text_of};

use hybrid_agent::api::{self, call, Listener, Request};
use hybrid_agent::clock::{Clock, ManualClock};
use hybrid_agent::controller::{Controller, Desk, Settings};
use hybrid_agent::dashboard::{Dashboard, COOKIE};
use hybrid_agent::provider::memory::MemoryProvider;
use hybrid_agent::state::{NodeReport, Phase, StateStore};
use hybrid_agent::volume::fake::{FakeHome, FakeNode};
use hybrid_agent::volume::NodeVolume;

const TOKEN: &str = "dashboard-test-admin-token-0123456789";

fn settings() -> Settings {
    Settings { volume: "projects".into(), store: "s3://bucket/projects".into(), lease: Duration::from_secs(900), ..Settings::for_tests("dash-ctl") }
}

/// A controller with its dashboard after a day: load high 09:00-12:00 (two nodes rented),
/// both drained in the afternoon and merged at 17:30, `burst-n0001` with 3 conflicts.
struct Day {
    _dir: tempfile::TempDir,
    /// Kept for the day's length (the API reads the desk).
    _ctrl: Arc<Mutex<Controller>>,
    desk: Arc<Desk>,
    dash: Arc<Dashboard>,
}

fn day() -> Day {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new("2026-03-02T08:40:00Z".parse().unwrap());
    let provider = MemoryProvider::new(Arc::new(clock.clone()));
    let home = FakeHome::default();
    home.get().conflicts.insert("burst-n0001".into(), 3);
    let store = StateStore::open(dir.path()).unwrap();
    let c = Controller::open(settings(), store, Arc::new(provider.clone()), Arc::new(home.clone()), Arc::new(clock.clone()));
    let mut c = c.unwrap();
    let desk = Desk::attach(&mut c);
    let ctrl = Arc::new(Mutex::new(c));
    let dash = Arc::new(Dashboard::new());
    let mut vols: BTreeMap<String, FakeNode> = BTreeMap::new();
    // 08:40 .. 18:00, a step every 10 minutes.
    for step in 0..56 {
        let hour = clock.now().to_zoned(jiff::tz::TimeZone::UTC).hour();
        let load = if (9..12).contains(&hour) { 97.0 } else { 20.0 };
        let mut c = ctrl.lock().unwrap();
        c.step(Some(load)).unwrap();
        dash.sample(c.state(), c.now());
        for inst in provider.running() {
            let boot = provider.bootstrap_of(&inst.id).unwrap();
            let vol = vols.entry(inst.id.clone()).or_default().clone();
            let running = c.state().node(&boot.node).is_some_and(|n| n.phase == Phase::Running);
            if running {
                vol.write(&format!("/out/{}-{step}", boot.node), 48 << 20);
                if step % 3 == 0 {
                    vol.push().unwrap();
                }
            }
            let report = |drained: bool| {
                let n = vol.get();
                NodeReport {
                    at: clock.now(),
                    healthy: true,
                    unpushed_bytes: n.unpushed,
                    last_push_at: (n.pushes > 0).then(|| clock.now()),
                    head: (n.pushes > 0).then_some(n.pushes),
                    unpushed_paths: vec![],
                    unpushed_files: 0,
                    store: Default::default(),
                    drained,
                    interruption: None,
                }
            };
            let d = c.report(&boot.node, &boot.token, report(false)).unwrap();
            if d.drain {
                vol.push().unwrap();
                c.report(&boot.node, &boot.token, report(true)).unwrap();
            }
        }
        drop(c);
        clock.advance(Duration::from_secs(600));
    }
    let c = ctrl.lock().unwrap();
    assert_eq!(c.state().nodes.len(), 2, "the day rented two nodes");
    assert_eq!(c.state().nights.last().unwrap().conflicts.get("burst-n0001"), Some(&3));
    drop(c);
    Day { _dir: dir, _ctrl: ctrl, desk, dash }
}

/// Serves the controller's routes with the dashboard's in front, as `hybrid-agent controller`.
struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(day: &Day) -> Server {
    let l = Listener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (k, d) = (day.desk.clone(), day.dash.clone());
    let handler = move |req: &Request| d.route(&k, TOKEN, req).unwrap_or_else(|| api::route(&k, TOKEN, req));
    let thread = api::serve(l, Arc::new(handler), stop.clone()).unwrap();
    Server { addr, stop, thread: Some(thread) }
}

fn login_path(addr: &str) -> String {
    let r = call(addr, "POST", "/v1/dashboard/login", Some(TOKEN), None).unwrap();
    assert_eq!(r.status, 200, "{}", r.message());
    r.body["path"].as_str().unwrap().to_string()
}

/// A raw GET with a `Cookie` header: status and the head.
fn get_with_cookie(addr: &str, path: &str, cookie: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: agent\r\n{cookie}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw)
}

#[test]
fn a_login_code_is_good_once_and_its_cookie_opens_only_the_read_only_data() {
    let day = day();
    let srv = serve(&day);
    assert_eq!(call(&srv.addr, "POST", "/v1/dashboard/login", None, None).unwrap().status, 401);
    assert_eq!(call(&srv.addr, "POST", "/v1/dashboard/login", Some("not-the-admin-token-000000"), None).unwrap().status, 401);
    let (status, page) = get_with_cookie(&srv.addr, "/dashboard", None);
    assert!(status == 200 && page.contains("text/html") && page.contains("dirty-chart"), "{status}");
    assert!(!page.contains("n0001"), "the page itself holds no data");
    assert_eq!(get_with_cookie(&srv.addr, "/dashboard/data", None).0, 401);

    let path = login_path(&srv.addr);
    assert!(!path.contains(TOKEN), "the admin token never goes into a URL");
    let (status, head) = get_with_cookie(&srv.addr, &path, None);
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("Location: /dashboard\r\n"), "{head}");
    let set = head.lines().find_map(|l| l.strip_prefix("Set-Cookie: ")).expect("a session cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let session = set.split(';').next().unwrap().to_string();
    assert!(session.starts_with(&format!("{COOKIE}=")));
    assert_eq!(get_with_cookie(&srv.addr, &path, None).0, 401, "the code is spent");

    let (status, data) = get_with_cookie(&srv.addr, "/dashboard/data", Some(&session));
    assert!(status == 200 && data.contains("\"n0002\"") && data.contains("\"conflicts\""), "{data}");
    assert_eq!(get_with_cookie(&srv.addr, "/dashboard/data", Some(&format!("{COOKIE}=forged"))).0, 401);
    // The cookie is no admin token: the API's routes (reads and changes) still want the bearer.
    assert_eq!(get_with_cookie(&srv.addr, "/v1/nodes", Some(&session)).0, 401);
    assert_eq!(get_with_cookie(&srv.addr, "/metrics", Some(&session)).0, 401);
    // The admin token reads the data too (scripts).
    let r = call(&srv.addr, "GET", "/dashboard/data", Some(TOKEN), None).unwrap();
    assert_eq!(r.body["nodes"].as_array().unwrap().len(), 2);
}

#[test]
fn chromium_renders_the_nodes_their_cost_the_nights_conflicts_and_a_chart() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED: no chromium (tests/run.sh installs Debian's chromium)");
        return;
    };
    let day = day();
    let srv = serve(&day);
    let scratch = tempfile::tempdir().unwrap();
    let base = format!("http://{}", srv.addr);

    // Without the login: the page loads and says so; no data.
    let dom = browse(&chromium, &scratch.path().join("stranger"), &format!("{base}/dashboard"), &["--dump-dom"]);
    assert!(text_of(&dom, "error").contains("not logged in"), "{dom}");
    assert!(!dom.contains("n0001"));

    // Through the login link `hybridctl dashboard` prints: the cookie, then the page with data.
    let profile = scratch.path().join("operator");
    let dom = browse(&chromium, &profile, &format!("{base}{}", login_path(&srv.addr)), &["--dump-dom"]);
    let ledger = day.desk.ledger_since(None);
    let samples = day.dash.data(&day.desk)["history"].as_array().unwrap().len();
    assert_eq!(text_of(&dom, "error"), "", "{dom}");
    assert_eq!(text_of(&dom, "volume"), "volume projects");
    let nodes = &dom[dom.find("<table id=\"nodes\"").unwrap()..];
    let nodes = &nodes[..nodes.find("</table>").unwrap()];
    for row in &ledger {
        assert!(row.cost > 0.0, "{row:?}");
        assert!(nodes.contains(&format!("<td>{}</td>", row.node)), "node {} in {nodes}", row.node);
        assert!(nodes.contains(&format!("${:.2}", row.cost)), "cost of {} in {nodes}", row.node);
    }
    assert_eq!(text_of(&dom, "cost-total"), format!("${:.2}", ledger.iter().map(|r| r.cost).sum::<f64>()));
    assert_eq!(text_of(&dom, "conflicts-last"), "3", "burst-n0001 merged with 3 conflicts");
    let report = &dom[dom.find("id=\"report\"").unwrap()..];
    let report = &report[..report.find("</section>").unwrap()];
    assert!(report.contains("2 branch(es) merged, 0 failed; deadline met."), "{report}");
    assert!(report.contains("burst-n0001: 3 conflict(s)"), "{report}");
    // The chart: one point per sample the controller took (56 steps), drawn as SVG.
    let chart = svg(&dom, "dirty-chart");
    assert!(samples == 56, "{samples}");
    assert!(chart.contains(&format!("data-points=\"{samples}\"")), "{chart}");
    assert_eq!(chart.matches("class=\"point\"").count(), samples);
    assert!(chart.contains("<polyline"));
    assert!(chart.matches("data-value=\"0\"").count() < samples, "some samples hold unpushed bytes");
    assert_eq!(svg(&dom, "cost-chart").matches("class=\"bar\"").count(), 2);
    // Pushes: one row per new layer a node reported (the day pushed every third step).
    let pushes = day.dash.data(&day.desk)["pushes"].as_array().unwrap().len();
    assert!(pushes >= 4 && pushes < samples, "{pushes} pushes in {samples} samples");

    if let Some(png) = std::env::var_os("HYBRIDFS_DASHBOARD_SCREENSHOT") {
        // The cookie is in the profile: straight to the page.
        let shot = format!("--screenshot={}", Path::new(&png).canonicalize().unwrap_or(PathBuf::from(&png)).display());
        browse(&chromium, &profile, &format!("{base}/dashboard"), &[&shot]);
        assert!(Path::new(&png).exists());
    }
}
