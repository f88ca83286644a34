//! Headless Debian `chromium` for the dashboard tests: find it, render a page's DOM or take a
//! screenshot, and pick elements out of the serialized DOM. Only std: the agent's tests include
//! this file too (`#[path]`), without linking the node crates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser, if the machine has one (`tests/run.sh` installs Debian's `chromium`).
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|b| {
        let out = Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// Runs headless chromium on `url` with `profile` as its user data dir (cookies persist
/// there between runs); `extra`: `--dump-dom` or `--screenshot=…`. Bounded (90 s); the page's
/// timers get 10 s of virtual time. Returns what it printed (the DOM with `--dump-dom`).
pub fn browse(chromium: &Path, profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--window-size=1280,1100"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` (its first text child), from the serialized DOM.
pub fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    &rest[start..start + rest[start..].find('<').unwrap()]
}

/// The element `<svg id="…"…>…</svg>` of the serialized DOM.
pub fn svg<'a>(dom: &'a str, id: &str) -> &'a str {
    element(dom, "svg", id)
}

/// The element `<TAG id="ID"…>…</TAG>` of the serialized DOM (not nested in one of its kind).
pub fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let at = dom.find(&format!("<{tag} id=\"{id}\"")).unwrap_or_else(|| panic!("no {tag} #{id}"));
    &dom[at..at + dom[at..].find(&format!("</{tag}>")).unwrap()]
}
