use std::path::Path;

use super::*;

const GOOD: &str = r#"role = "controller"
state_dir = "/tmp/agent"

[volume]
name = "main"
store = "file:///tmp/store"

[api]
listen = "127.0.0.1:7870"
token_file = "/tmp/agent/token"

[load]
command = "cat /tmp/load"

[scale_up]
threshold = 90
for = "10m"

[burst]
window = { start = "08:00", end = "17:00", tz = "Europe/Istanbul" }
max_nodes = 2

[merge]
start = "17:30"
deadline = "07:30"
tz = "Europe/Istanbul"

[provider]
kind = "local"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("agent.toml"), text)
}

fn err(text: &str) -> ConfigError {
    parse(text).expect_err("config should be refused")
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[test]
fn the_example_config_parses_with_its_defaults() {
    let cfg = parse(GOOD).unwrap();
    assert_eq!(cfg.role(), Role::Controller);
    assert_eq!(cfg.scale_up.as_ref().unwrap().for_, Dur(Duration::from_secs(600)));
    assert_eq!(cfg.scale_down(), Some((90.0, Duration::from_secs(1200))));
    assert_eq!(cfg.load.as_ref().unwrap().every, Dur(Duration::from_secs(30)));
    assert_eq!(cfg.burst.as_ref().unwrap().window.tz.name, "Europe/Istanbul");
    assert_eq!(cfg.node().mountpoint, PathBuf::from("/mnt/hybrid"));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = GOOD.replace("max_nodes = 2", "max_nodes = 2\nmax_node = 3");
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("burst.max_node", line_of(&text, "max_node = 3")));
    assert!(e.message.contains("unknown field `max_node`"), "{e}");
    assert_eq!(e.to_string().split(':').next(), Some("agent.toml"));
}

#[test]
fn a_bad_duration_names_the_key_and_line() {
    let text = GOOD.replace(r#"for = "10m""#, r#"for = "10 minutes""#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("scale_up.for", line_of(&text, "10 minutes")));
    assert!(e.message.contains("not a duration"), "{e}");
}

#[test]
fn a_bad_time_or_zone_inside_an_inline_table_names_the_inner_key() {
    let text = GOOD.replace(r#"start = "08:00""#, r#"start = "8am""#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("burst.window.start", line_of(&text, "8am")));
    let text = GOOD.replace(r#"tz = "Europe/Istanbul" }"#, r#"tz = "Europe/Atlantis" }"#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("burst.window.tz", line_of(&text, "Atlantis")));
    assert!(e.message.contains("not a known time zone"), "{e}");
    let text = GOOD.replace(r#"deadline = "07:30""#, r#"deadline = "24:30""#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("merge.deadline", line_of(&text, "24:30")));
}

#[test]
fn a_wrong_type_and_a_missing_key_are_named() {
    let text = GOOD.replace("threshold = 90", r#"threshold = "high""#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("scale_up.threshold", line_of(&text, "high")));
    let text = GOOD.replace("store = \"file:///tmp/store\"\n", "");
    let e = err(&text);
    assert_eq!(e.key, "volume.store", "{e}");
    assert!(e.message.contains("missing field `store`"), "{e}");
}

#[test]
fn cross_field_checks_name_the_key_and_line() {
    let text = GOOD.replace("max_nodes = 2", "max_nodes = 0");
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("burst.max_nodes", line_of(&text, "max_nodes = 0")));
    let text = GOOD.replace("[burst]", "[scale_down]\nthreshold = 95\nfor = \"20m\"\n\n[burst]");
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("scale_down.threshold", line_of(&text, "threshold = 95")));
    let text = GOOD.replace("[provider]\nkind = \"local\"\n", "");
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("role", 1));
    assert!(e.message.contains("[provider]"), "{e}");
}

#[test]
fn an_unknown_role_or_provider_is_refused() {
    let e = err(&GOOD.replace(r#"role = "controller""#, r#"role = "boss""#));
    assert_eq!((e.key.as_str(), e.line), ("role", 1));
    let text = GOOD.replace(r#"kind = "local""#, r#"kind = "azure""#);
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("provider.kind", line_of(&text, "azure")));
}

#[test]
fn a_node_config_needs_only_role_and_state_dir() {
    let cfg = parse("role = \"node\"\nstate_dir = \"/tmp/n\"\n[node]\npush_every = \"5m\"\n").unwrap();
    assert_eq!(cfg.role(), Role::Node);
    assert_eq!(cfg.node().push_every, Dur(Duration::from_secs(300)));
    let e = err("role = \"node\"\nstate_dir = \"/tmp/n\"\n[node]\npush_evry = \"5m\"\n");
    assert_eq!((e.key.as_str(), e.line), ("node.push_evry", 4));
}

#[test]
fn budget_leaks_offers_and_the_command_provider_parse_and_bad_values_name_key_and_line() {
    let text = GOOD.replace("kind = \"local\"\n", "kind = \"command\"\n[provider.command]\nprogram = \"/opt/prov --region x\"\ntimeout = \"30s\"\n[provider.offers]\ngpu_type = \"a100\"\nmax_price_per_hour = 4.5\n")
        + "\n[budget]\nper_day = 50.0\nper_month = 800\n\n[leaks]\nterminate = true\n";
    let cfg = parse(&text).unwrap();
    let p = cfg.provider.as_ref().unwrap();
    assert_eq!(*p.kind.get_ref(), ProviderKind::Command);
    assert_eq!(p.command.as_ref().unwrap().timeout, Dur(Duration::from_secs(30)));
    assert_eq!(p.offers.as_ref().unwrap().max_price_per_hour.as_ref().map(|v| *v.get_ref()), Some(4.5));
    let b = cfg.budget.as_ref().unwrap();
    assert_eq!((*b.per_day.get_ref(), b.drain_time), (50.0, Dur(Duration::from_secs(1800))));
    assert!(cfg.leaks.as_ref().unwrap().terminate);
    assert_eq!(cfg.leaks.as_ref().unwrap().grace, Dur(Duration::from_secs(600)));

    let cases = [
        (text.replace("per_day = 50.0", "per_day = 0"), "budget.per_day", "per_day = 0"),
        (text.replace("per_month = 800", "per_month = 20"), "budget.per_month", "per_month = 20"),
        (text.replace("max_price_per_hour = 4.5", "max_price_per_hour = -1"), "provider.offers.max_price_per_hour", "max_price_per_hour"),
        (text.replace("program = \"/opt/prov --region x\"", "program = \" \""), "provider.command.program", "program = "),
        (text.replace("[leaks]\nterminate = true", "[leaks]\nterminate = \"yes\""), "leaks.terminate", "terminate = \"yes\""),
        (text.replace("per_day = 50.0", "per_day = 50.0\nper_week = 9"), "budget.per_week", "per_week"),
        (GOOD.replace("kind = \"local\"", "kind = \"command\""), "provider.kind", "kind = \"command\""),
    ];
    for (bad, key, needle) in cases {
        let e = err(&bad);
        assert_eq!((e.key.as_str(), e.line), (key, line_of(&bad, needle)), "{e}");
    }
}

const EC2: &str = r#"kind = "ec2"
instance_type = "g5.xlarge"
[provider.ec2]
region = "eu-central-1"
endpoint_url = "http://127.0.0.1:5000"
access_key_id = "AKIDEXAMPLE"
secret_access_key_file = "/etc/hybridfs/aws-secret"
image_id = "ami-0123456789abcdef0"
spot = true
offers = [{ instance_type = "g5.xlarge", gpus = 1, price_per_hour = 1.006 }]
"#;

fn with_ec2(ec2: &str) -> String {
    GOOD.replace("kind = \"local\"\n", ec2)
}

#[test]
fn an_ec2_provider_config_parses_and_its_errors_name_key_and_line() {
    let cfg = parse(&with_ec2(EC2)).unwrap();
    let p = cfg.provider.as_ref().unwrap();
    assert_eq!(p.kind(), ProviderKind::Ec2);
    let ec2 = p.ec2.as_ref().unwrap();
    assert_eq!((ec2.region.0.as_str(), ec2.metadata_endpoint.as_str()), ("eu-central-1", "http://169.254.169.254"));
    assert!(ec2.spot && ec2.offers[0].gpus == 1);
    let text = with_ec2(&EC2.replace("eu-central-1", "xx-atlantis-1"));
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("provider.ec2.region", line_of(&text, "xx-atlantis-1")));
    assert!(e.to_string().contains("not a known AWS region") && !e.to_string().contains('\n'), "{e}");
    let text = with_ec2(&EC2.replace("spot = true", "spot = true\nsecret_access_key = \"inline\""));
    let e = err(&text);
    assert_eq!(e.line, line_of(&text, "secret_access_key = "), "{e}");
    let text = with_ec2("kind = \"ec2\"\n");
    let e = err(&text);
    assert_eq!((e.key.as_str(), e.line), ("provider.kind", line_of(&text, "ec2")));
    assert!(e.message.contains("[provider.ec2]"), "{e}");
}
