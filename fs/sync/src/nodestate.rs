//! A burst node's last reported state, kept next to its branch in the store, so that the home
//! node can tell whether the branch it merges is all the node has (issue 10's warning).
//!
//! ```text
//! VOLUME/branches/BRANCH/node    JSON NodeState (sealed like the head when encrypted)
//! ```
//!
//! The node that pushes `BRANCH` writes it ([`publish`] of [`local`]): the node agent (issue 12)
//! on its schedule and before a drain; any tool may. It says which layer the node's last push
//! reached and how many records the node changed since. A merge reads it ([`read`]) and warns
//! ([`unpushed_warning`]) when the branch's head is older than that state: the node holds
//! changes the merge cannot see (they come with the branch's next push and next merge). No
//! state (a node that never reported) means nothing is known: no warning.

use crate::{Head, Remote, Result, SyncError};
use hybridfs_cloud::{Cond, StoreError};
use hybridfs_core::meta::LIVE;
use hybridfs_core::Volume;
use serde::{Deserialize, Serialize};

/// Journal rows counted at most when a node counts its unpushed records.
pub const COUNT_CAP: u64 = 1_000_000;

/// What a node last said about its branch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    /// The node that reported (a host name or the agent's node id).
    pub node: String,
    /// Unix seconds.
    pub at: i64,
    /// The branch's layer this node's last push reached (0: never pushed).
    pub pushed_seq: u64,
    /// Records the node changed since that push, up to [`COUNT_CAP`] (0: all pushed).
    pub unpushed_records: u64,
}

impl Remote {
    fn node_key(&self, branch: &str) -> String {
        format!("{}/branches/{branch}/node", self.volume)
    }
}

/// The state of `vol` as the node pushing `branch` would report it now.
pub fn local(vol: &Volume, branch: &str, node: &str) -> Result<NodeState> {
    let since = crate::unpushed_since(vol.meta(), branch)?;
    let mut unpushed = 0;
    vol.meta().changes(since.saturating_sub(1), LIVE, &mut |_| {
        unpushed += 1;
        Ok(unpushed < COUNT_CAP)
    })?;
    let pushed_seq = crate::load_state(vol, branch)?.seq;
    Ok(NodeState { node: node.to_string(), at: crate::now(), pushed_seq, unpushed_records: unpushed })
}

/// Write `state` as the last reported state of `branch`'s node.
pub fn publish(remote: &Remote, branch: &str, state: &NodeState) -> Result<()> {
    let key = remote.node_key(branch);
    let body = remote.seal_meta(&key, serde_json::to_vec(state).expect("plain data"));
    remote.store.put(&key, &body, Cond::None)?;
    Ok(())
}

/// The last reported state of `branch`'s node, if it ever reported.
pub fn read(remote: &Remote, branch: &str) -> Result<Option<NodeState>> {
    let key = remote.node_key(branch);
    match remote.store.get(&key) {
        Ok((body, _)) => {
            let bytes = remote.open_meta(&key, body)?;
            let state = serde_json::from_slice(&bytes).map_err(|e| SyncError::Corrupt(format!("reported state of branch {branch}'s node: {e}")))?;
            Ok(Some(state))
        }
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The warning a merge of `branch` at `head` gives when its node reported more than the head
/// holds: changes made since its last push, or a push newer than the head.
pub fn unpushed_warning(branch: &str, head: &Head, state: &NodeState) -> Option<String> {
    let when = {
        let (y, m, d, hh, mm, _) = hybridfs_core::types::utc(state.at);
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
    };
    if state.pushed_seq > head.seq {
        return Some(format!(
            "node {} reported layer {} of branch {branch} at {when}, newer than the head merged (layer {}): merge again to take the rest",
            state.node, state.pushed_seq, head.seq
        ));
    }
    if state.pushed_seq == head.seq && state.unpushed_records > 0 {
        return Some(format!(
            "node {} reported {} changed records not pushed yet at {when} (on top of layer {}): they are not in this merge; push branch {branch} from the node and merge again",
            state.node, state.unpushed_records, head.seq
        ));
    }
    None
}
