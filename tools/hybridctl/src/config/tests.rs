use super::*;
use std::collections::HashMap;

const FILE: &str = r#"# a node's settings
home = "/srv/hybridfs"

[log]
level = "info,hybridfs_sync=debug"
format = "json"

[mount]
threads = 8
writeback_cache = true
seal_delay = "2m"
metrics_addr = "127.0.0.1:9580"

[clone]
cache = "20G"

[s3]
region = "eu-central-1"
secret_access_key = "s3cr3t"
"#;

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k: &str| map.get(k).cloned()
}

fn resolve(text: &str, vars: &[(&str, &str)], flags: Flags) -> Result<Config, Error> {
    Config::resolve(Some((Path::new("/etc/hybridfs/hybridfs.toml"), text)), flags, &env_of(vars))
}

fn err(text: &str) -> String {
    resolve(text, &[], Flags::default()).expect_err("the config should be refused").to_string()
}

#[test]
fn the_file_sets_every_kind_of_value() {
    let c = resolve(FILE, &[], Flags::default()).unwrap();
    assert_eq!(c.home, PathBuf::from("/srv/hybridfs"));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!((c.threads, c.writeback_cache, c.seal_delay), (8, true, 120));
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9580".parse().unwrap()));
    assert_eq!(c.cache, Some(20 << 30));
    assert_eq!(c.source_of("mount.threads"), Some("/etc/hybridfs/hybridfs.toml:9"));
    assert_eq!(c.source_of("mount.read_timeout"), Some("default"));
    // Unset keys keep their defaults.
    assert_eq!((c.block_size.as_str(), c.read_timeout, c.store.as_deref()), ("1M", None, None));
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let text = "[mount]\nthreads = 4\nseal_delay = \"soon\"\n";
    let e = err(text);
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:3: mount.seal_delay: "), "{e}");
    assert!(e.contains("`soon` is not a duration"), "{e}");

    let e = err("home = \"/h\"\n\n[format]\nblock_size = \"3K\"\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:4: format.block_size: "), "{e}");

    let e = err("[mount]\nthreads = 0\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:2: mount.threads: "), "{e}");

    let e = err("[mount]\nmetrics_addr = [1, 2]\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:2: mount.metrics_addr: "), "{e}");

    let e = err("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:3: "), "a duplicate key is refused at its line: {e}");
}

#[test]
fn unknown_keys_and_sections_are_errors() {
    let e = err("[mount]\nthreads = 4\nwriteback = true\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:3: mount.writeback: unknown field `writeback`"), "{e}");
    let e = err("home = \"/h\"\n[mounts]\nthreads = 4\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:2: mounts: unknown field `mounts`"), "{e}");
    let e = err("hom = \"/h\"\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:1: hom: "), "{e}");
}

#[test]
fn the_environment_beats_the_file_and_flags_beat_both() {
    let env = [("HYBRIDFS_MOUNT_THREADS", "6"), ("HYBRIDFS_HOME", "/env/home"), ("HYBRIDFS_LOG_FORMAT", "text")];
    let c = resolve(FILE, &env, Flags::default()).unwrap();
    assert_eq!((c.threads, c.home.to_str().unwrap(), c.log_format), (6, "/env/home", LogFormat::Text));
    assert_eq!(c.source_of("mount.threads"), Some("env HYBRIDFS_MOUNT_THREADS"));
    assert_eq!(c.source_of("mount.seal_delay"), Some("/etc/hybridfs/hybridfs.toml:11"));

    let flags = Flags { threads: Some(Threads(2)), home: Some("/flag/home".into()), ..Flags::default() };
    let c = resolve(FILE, &env, flags).unwrap();
    assert_eq!((c.threads, c.home.to_str().unwrap()), (2, "/flag/home"));
    assert_eq!(c.source_of("mount.threads"), Some("flag --threads"));
    assert_eq!(c.source_of("home"), Some("flag --home"));
    // An empty variable is unset (as the AWS SDK reads them).
    let c = resolve(FILE, &[("HYBRIDFS_MOUNT_THREADS", "")], Flags::default()).unwrap();
    assert_eq!(c.threads, 8);
}

#[test]
fn a_bad_variable_is_named() {
    let e = resolve("", &[("HYBRIDFS_MOUNT_SEAL_DELAY", "5y")], Flags::default()).unwrap_err().to_string();
    assert!(e.starts_with("environment HYBRIDFS_MOUNT_SEAL_DELAY: mount.seal_delay: `5y`"), "{e}");
}

#[test]
fn secrets_are_masked_and_s3_values_go_to_the_sdk_variables() {
    let c = resolve(FILE, &[("AWS_ACCESS_KEY_ID", "AKIDFROMENV")], Flags::default()).unwrap();
    let row = c.rows.iter().find(|r| r.key == "s3.secret_access_key").unwrap();
    assert_eq!(row.value, "******");
    assert!(!format!("{:?}", c.rows).contains("s3cr3t"), "the secret is in no row");
    assert_eq!(c.source_of("s3.access_key_id"), Some("env AWS_ACCESS_KEY_ID"));
    // What the file says is handed on; what the environment says already is not touched.
    assert!(c.exports.contains(&("AWS_SECRET_ACCESS_KEY", "s3cr3t".to_string())), "{:?}", c.exports.len());
    assert!(c.exports.contains(&("AWS_REGION", "eu-central-1".to_string())));
    assert!(!c.exports.iter().any(|(var, _)| *var == "AWS_ACCESS_KEY_ID"));
}

#[test]
fn only_the_default_file_may_be_missing() {
    let none = env_of(&[]);
    assert_eq!(file_to_read(None, &none), (PathBuf::from(DEFAULT_FILE), false));
    let from_env = env_of(&[(FILE_ENV, "/etc/other.toml")]);
    assert_eq!(file_to_read(None, &from_env), (PathBuf::from("/etc/other.toml"), true));
    assert_eq!(file_to_read(Some(Path::new("/x.toml")), &from_env), (PathBuf::from("/x.toml"), true));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let flags = Flags { config: Some(missing.clone()), ..Flags::default() };
    let e = Config::load(flags, &none).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:0: -: cannot read the config file", missing.display())), "{e}");
}

#[test]
fn every_key_is_documented_with_its_default() {
    let doc = include_str!("../../../../doc/CONFIGURATION.md");
    for key in KEYS {
        let row = doc.lines().find(|l| l.starts_with(&format!("| `{}` |", key.name)));
        let row = row.unwrap_or_else(|| panic!("doc/CONFIGURATION.md has no row for `{}`", key.name));
        assert!(row.contains(key.default), "the row of `{}` gives its default {:?}: {row}", key.name, key.default);
        for var in key.env {
            assert!(row.contains(var), "the row of `{}` names {var}: {row}", key.name);
        }
    }
}

#[test]
fn the_shipped_example_checks_as_it_is_and_with_every_key_set() {
    let example = include_str!("../../../../dist/hybridfs.toml");
    resolve(example, &[], Flags::default()).unwrap();
    let all: String = example.lines().map(|l| l.strip_prefix("# ").filter(|r| r.contains(" = ")).unwrap_or(l)).collect::<Vec<_>>().join("\n");
    let c = resolve(&all, &[], Flags::default()).unwrap();
    let from_file = c.rows.iter().filter(|r| r.source.starts_with("/etc/hybridfs/hybridfs.toml:")).count();
    assert!(from_file >= KEYS.len() - 1, "the example shows nearly every key: {:?}", c.rows);
}

#[test]
fn the_agent_address_is_checked_and_follows_the_same_order() {
    let text = "[agent]\naddress = \"127.0.0.1:7870\"\ntoken_file = \"/etc/hybridfs/t\"\n";
    let c = resolve(text, &[], Flags::default()).unwrap();
    assert_eq!((c.agent.as_str(), c.agent_token_file.to_str().unwrap()), ("127.0.0.1:7870", "/etc/hybridfs/t"));
    let c = resolve(text, &[("HYBRID_AGENT", "unix:/run/a.sock")], Flags::default()).unwrap();
    assert_eq!((c.agent.as_str(), c.source_of("agent.address")), ("unix:/run/a.sock", Some("env HYBRID_AGENT")));
    let c = resolve("", &[], Flags::default()).unwrap();
    assert_eq!(c.agent, crate::agentcmd::DEFAULT_ADDR);
    let e = err("[agent]\naddress = \"localhost\"\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:2: agent.address: `localhost` is not an agent address"), "{e}");
}

#[test]
fn check_warns_of_variables_that_set_nothing_and_of_a_readable_secret() {
    let c = resolve("", &[], Flags::default()).unwrap();
    let vars = ["HYBRIDFS_MOUNT_THREAD", "HYBRIDFS_MOUNT_THREADS", "HYBRIDFS_TEST_KEEP", "HYBRIDFS_ENCRYPTION_KEY", "PATH"];
    let w = c.warnings(vars.iter().map(|v| v.to_string()));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("environment HYBRIDFS_MOUNT_THREAD sets nothing"), "{w:?}");

    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hybridfs.toml");
    std::fs::write(&file, "[s3]\nsecret_access_key = \"x\"\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(Flags { config: Some(file.clone()), ..Flags::default() }, &env_of(&[])).unwrap();
    let w = c.warnings(std::iter::empty());
    assert!(w.len() == 1 && w[0].contains("chmod 600"), "{w:?}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(c.warnings(std::iter::empty()).is_empty());
}

#[test]
fn the_dashboard_needs_a_metrics_address_and_the_error_says_where_it_was_asked_for() {
    let c = resolve("[mount]\nmetrics_addr = \"127.0.0.1:9580\"\ndashboard = true\n", &[], Flags::default()).unwrap();
    assert!(c.dashboard);
    assert!(!resolve("", &[], Flags::default()).unwrap().dashboard, "off by default");
    let e = err("[mount]\nthreads = 2\ndashboard = true\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:3: mount.dashboard: needs mount.metrics_addr"), "{e}");
    let e = resolve("", &[("HYBRIDFS_MOUNT_DASHBOARD", "yes")], Flags::default()).unwrap_err().to_string();
    assert!(e.starts_with("env HYBRIDFS_MOUNT_DASHBOARD: mount.dashboard: needs mount.metrics_addr"), "{e}");
    let e = resolve("", &[], Flags { dashboard: Some(true), ..Flags::default() }).unwrap_err().to_string();
    assert!(e.starts_with("flag --dashboard: mount.dashboard: needs mount.metrics_addr"), "{e}");
    // The address from the environment, the switch from the flag: fine together.
    let c = resolve("", &[("HYBRIDFS_MOUNT_METRICS_ADDR", "127.0.0.1:9581")], Flags { dashboard: Some(true), ..Flags::default() }).unwrap();
    assert_eq!((c.dashboard, c.source_of("mount.dashboard")), (true, Some("flag --dashboard")));
    let e = err("[mount]\ndashboard = \"sometimes\"\n");
    assert!(e.starts_with("/etc/hybridfs/hybridfs.toml:2: mount.dashboard: `sometimes` is not true or false"), "{e}");
}

#[test]
fn the_host_lease_comes_from_the_file_the_environment_or_the_flag_and_is_never_zero() {
    let c = resolve("[mount]\nhost_lease = \"2m\"\n", &[], Flags::default()).unwrap();
    assert_eq!(c.host_lease, Some(120));
    let c = resolve("[mount]\nhost_lease = \"2m\"\n", &[("HYBRIDFS_HOST_LEASE_SECS", "6")], Flags::default()).unwrap();
    assert_eq!((c.host_lease, c.source_of("mount.host_lease")), (Some(6), Some("env HYBRIDFS_HOST_LEASE_SECS")));
    let c = resolve("", &[], Flags { host_lease: Some(Secs(9)), ..Flags::default() }).unwrap();
    assert_eq!(c.host_lease, Some(9));
    assert_eq!(resolve("", &[], Flags::default()).unwrap().host_lease, None, "unset: the volume's default (60 s)");
    let e = err("[mount]\nhost_lease = \"0s\"\n");
    assert!(e.contains("mount.host_lease"), "{e}");
}
