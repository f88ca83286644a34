//! Per-node store credentials: the controller's `volume.credentials_command`.
//!
//! Before each launch the controller runs the command (`sh -c`) with `HYBRID_AGENT_ACTION=mint`
//! and the node's name, branch, volume and store in `HYBRID_AGENT_NODE`, `HYBRID_AGENT_BRANCH`,
//! `HYBRID_AGENT_VOLUME`, `HYBRID_AGENT_STORE`. It prints one JSON object of environment
//! variables (`{"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}`), which go into
//! that node's bootstrap over `provider.local.node_env` (the bootstrap file is 0600). What the
//! credentials may do is the command's business; the intent: read the volume, write its
//! shared content-addressed objects (`VOLUME/blocks/`, `VOLUME/packs/`) and its own branch
//! (`VOLUME/branches/BRANCH/`), and nothing else, so a node cannot move `main`'s head. Once the
//! node's termination is confirmed it runs again with `HYBRID_AGENT_ACTION=revoke` (a failure
//! there is logged, not retried). `tools/seaweedfs-credentials.sh` does it for SeaweedFS
//! (`weed shell` `s3.configure`, per-prefix `Write:` actions); AWS would use STS AssumeRole with
//! a session policy.
//!
//! The command's output is never logged (secrets); a failure names its exit status and the
//! last line of its stderr.

use std::collections::BTreeMap;
use std::process::Command;

/// The node a command runs for.
pub struct NodeScope<'a> {
    pub node: &'a str,
    pub branch: &'a str,
    pub volume: &'a str,
    pub store: &'a str,
}

fn run(cmd: &str, action: &str, n: &NodeScope) -> Result<Vec<u8>, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("HYBRID_AGENT_ACTION", action)
        .env("HYBRID_AGENT_NODE", n.node)
        .env("HYBRID_AGENT_BRANCH", n.branch)
        .env("HYBRID_AGENT_VOLUME", n.volume)
        .env("HYBRID_AGENT_STORE", n.store)
        .output()
        .map_err(|e| format!("run the credentials command: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
        return Err(format!("credentials command ({action} for node {}): {}: {line}", n.node, out.status));
    }
    Ok(out.stdout)
}

/// The environment the command mints for node `n`.
pub fn mint(cmd: &str, n: &NodeScope) -> Result<BTreeMap<String, String>, String> {
    let out = run(cmd, "mint", n)?;
    serde_json::from_slice(&out)
        .map_err(|e| format!("credentials command (mint for node {}): print one JSON object of strings ({e})", n.node))
}

/// Tells the command node `n` is gone.
pub fn revoke(cmd: &str, n: &NodeScope) -> Result<(), String> {
    run(cmd, "revoke", n).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: NodeScope = NodeScope { node: "n0001", branch: "burst-n0001", volume: "main", store: "s3://b/p" };

    #[test]
    fn the_command_mints_for_the_node_it_is_told_of_and_failures_name_no_secret() {
        let cmd = r#"printf '{"AWS_ACCESS_KEY_ID":"%s-%s","SECRET":"s3cr3t"}' "$HYBRID_AGENT_NODE" "$HYBRID_AGENT_BRANCH""#;
        let env = mint(cmd, &N).unwrap();
        assert_eq!(env["AWS_ACCESS_KEY_ID"], "n0001-burst-n0001");
        let e = mint("echo s3cr3t; echo denied >&2; exit 3", &N).unwrap_err();
        assert!(e.contains("denied") && e.contains("exit status: 3") && !e.contains("s3cr3t"), "{e}");
        let e = mint("echo '{\"K\": 1}'", &N).unwrap_err();
        assert!(e.contains("JSON object of strings"), "{e}");
        revoke("test \"$HYBRID_AGENT_ACTION\" = revoke", &N).unwrap();
    }
}
