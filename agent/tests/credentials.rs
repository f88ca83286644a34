//! Scoped store credentials, for real: a SeaweedFS S3 server (`weed`, installed by
//! tests/run.sh) keeps its identities in its filer; `tools/seaweedfs-credentials.sh`, run as the
//! controller's `volume.credentials_command` through `credentials::mint`, makes one for node
//! n0001. With them, `hybridctl` clones the home volume and pushes the node's branch, and is
//! refused (AccessDenied) pushing another node's branch; a direct PUT of main's head (AWS
//! CLI, where installed) is refused too: a burst node cannot move main (the merge, at home,
//! does). After `credentials::revoke` the same keys are refused outright.
//!
//! Needs `weed` and `hybridctl` (env HYBRIDCTL, or built next to the agent); talks only to
//! 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use hybrid_agent::credentials::{mint, revoke, NodeScope};

/// The weed server and its ports; SIGTERM and reaped on drop, and the gRPC unix sockets it
/// makes in /tmp whatever TMPDIR says (`/tmp/seaweedfs-KIND-grpc-PORT.sock`) removed.
struct Weed(Child, Vec<u16>);

impl Drop for Weed {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the server this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
        for port in self.1.iter().flat_map(|p| [*p, p + 10000]) {
            for kind in ["master", "volume", "filer", "s3"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"));
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }
}

/// A port free now whose gRPC twin (+10000, weed's default) is free too.
fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 55000 && !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

fn weed_shell(dir: &Path, master: u16, filer: u16, cmd: &str) -> bool {
    let mut child = Command::new("weed")
        .args(["shell", &format!("-master=127.0.0.1:{master}"), &format!("-filer=127.0.0.1:{filer}")])
        .env("TMPDIR", dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(cmd.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("rror")
}

fn retry(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn hybridctl(ctl: &Path, home: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    Command::new(ctl).args(args).env("HYBRIDFS_HOME", home).env("AWS_EC2_METADATA_DISABLED", "true").envs(env).output().unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_node_s_minted_credentials_push_its_branch_are_denied_main_and_die_when_revoked() {
    let Some(ctl) = common::hybridctl() else {
        eprintln!("SKIPPED: needs hybridctl");
        return;
    };
    if !Command::new("weed").arg("version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: needs weed (SeaweedFS; tests/run.sh installs it)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..4 {
        let p = free_port(&ports);
        ports.push(p);
    }
    let [master, volume, filer, s3] = [ports[0], ports[1], ports[2], ports[3]];
    std::fs::create_dir_all(dir.join("weed")).unwrap();
    let log = std::fs::File::create(dir.join("weed.log")).unwrap();
    // No -s3.config: identities live in the filer, where `s3.configure` changes them.
    let _weed = Weed(
        Command::new("weed")
            .args(["server", &format!("-dir={}", dir.join("weed").display()), "-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .args(["-s3", &format!("-s3.port={s3}"), "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=8"])
            .arg(format!("-filer.localSocket={}", dir.join("filer.sock").display()))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            // Its glog files go to the test's folder, not /tmp.
            .env("TMPDIR", dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        ports.clone(),
    );
    let admin = "s3.configure -user=admin -access_key=adminkey0123 -secret_key=adminsecret0123 -actions=Admin,Read,Write,List,Tagging -apply";
    retry("the filer takes the admin identity", 60, || weed_shell(dir, master, filer, admin));
    retry("the bucket is made", 30, || weed_shell(dir, master, filer, "s3.bucket.create -name hyb"));

    let endpoint: BTreeMap<String, String> = [
        ("AWS_ENDPOINT_URL".to_string(), format!("http://127.0.0.1:{s3}")),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ]
    .into();
    let mut admin_env = endpoint.clone();
    admin_env.insert("AWS_ACCESS_KEY_ID".into(), "adminkey0123".into());
    admin_env.insert("AWS_SECRET_ACCESS_KEY".into(), "adminsecret0123".into());
    let home = dir.join("home");
    let store = "s3://hyb/pre";
    retry("the S3 gateway answers the admin", 30, || hybridctl(&ctl, &home, &admin_env, &["format", "main", "--store", store]).status.success());
    ok(&hybridctl(&ctl, &home, &admin_env, &["push", "--volume", "main", "--branch", "main", "--json"]), "publish main");

    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/seaweedfs-credentials.sh");
    let cmd = format!("WEED_MASTER=127.0.0.1:{master} WEED_FILER=127.0.0.1:{filer} {}", script.display());
    let scope = NodeScope { node: "n0001", branch: "burst-n0001", volume: "main", store };
    let minted = mint(&cmd, &scope).unwrap();
    assert!(minted.contains_key("AWS_ACCESS_KEY_ID") && minted.contains_key("AWS_SECRET_ACCESS_KEY"), "{:?}", minted.keys());
    let mut node_env = endpoint.clone();
    node_env.extend(minted);

    // The node: clone, push its branch; main's head is not its to write.
    let node = dir.join("node");
    let url = format!("{store}/main");
    let cloned = |h: &Path| hybridctl(&ctl, h, &node_env, &["clone", &url, "--branch", "burst-n0001", "--source", "main", "--name", "main", "--json"]);
    retry("the minted identity reaches the S3 gateway", 30, || cloned(&node).status.success());
    ok(&hybridctl(&ctl, &node, &node_env, &["push", "--volume", "main", "--json"]), "push the node's branch");
    // Another node's branch: refused by the store.
    let denied = hybridctl(&ctl, &node, &node_env, &["push", "--volume", "main", "--branch", "burst-n0002", "--json"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success() && err.contains("AccessDenied"), "writing burst-n0002 with n0001's credentials: {err}");
    // main's head itself, written directly (hybridctl's own push refuses before the store
    // would): refused by the store. With the AWS CLI where it is installed.
    if Command::new("aws").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let body = dir.join("forged-head");
        std::fs::write(&body, "forged").unwrap();
        let put = Command::new("aws")
            .args(["s3api", "put-object", "--bucket", "hyb", "--key", "pre/main/branches/main/head", "--body"])
            .arg(&body)
            .args(["--endpoint-url", &format!("http://127.0.0.1:{s3}")])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
            .envs(&node_env)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&put.stderr);
        assert!(!put.status.success() && err.contains("AccessDenied"), "writing main's head with the node's credentials: {err}");
    } else {
        eprintln!("no aws CLI: main's head is not tried directly (another node's branch was)");
    }
    ok(&hybridctl(&ctl, &home, &admin_env, &["fsck", "main", "--remote"]), "main is intact");

    // Revoked: the same keys are refused.
    revoke(&cmd, &scope).unwrap();
    let again = dir.join("node-again");
    retry("the revocation reaches the S3 gateway", 30, || !cloned(&again).status.success());
}
