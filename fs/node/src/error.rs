//! Errors of the node library.
//!
//! Every public operation of the library (the home and its volumes, the lock, status, the
//! control call, the mount lifecycle, format, clone, fsck, journal, merge log and the
//! `open_*` of a volume's engines) returns a [`NodeError`]: a kind to match on, with the
//! message phrased for the person at the terminal (the context chain on one line). Inside,
//! the library works with `anyhow` and context; [`NodeError::from`] sorts an `anyhow` chain
//! into its kind at the surface (`typed`), and a `NodeError` inside a chain keeps its kind.
//! [`exit_code`] is the one table from errors to exit codes.

use crate::control::ControlError;
use hybridfs_cloud::StoreError;

/// An error that is the caller's fault (a bad name, size, URL or flag): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// `Err(BadInput(msg))`.
pub fn bad_input<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(BadInput(msg.into()).into())
}

/// What went wrong, as a caller of the node library decides on it. Each holds the whole
/// message (context included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The caller's fault: a bad name, size, URL, flag or request (exit 2).
    #[error("{0}")]
    BadInput(String),
    /// No such volume (exit 2).
    #[error("{0}")]
    NotFound(String),
    /// Held by someone else: the volume's lock, or refused while it is mounted.
    #[error("{0}")]
    Busy(String),
    /// The object store does not answer (or the call was cancelled): try again later.
    #[error("{0}")]
    StoreUnreachable(String),
    /// The mount process's control socket: not mounted, another protocol version, an
    /// answer that does not fit, or the operation failed there.
    #[error("{0}")]
    Control(String),
    /// A local file or directory could not be read or written.
    #[error("{0}")]
    Io(String),
    /// Everything else.
    #[error("{0}")]
    Failed(String),
}

pub type NodeResult<T> = Result<T, NodeError>;

impl NodeError {
    /// Exit code 2 (bad input) or 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::BadInput(_) | NodeError::NotFound(_) => 2,
            _ => 1,
        }
    }
}

/// The kind of one cause in a chain, if it says one.
fn kind_of(cause: &(dyn std::error::Error + 'static), msg: &str) -> Option<NodeError> {
    let msg = msg.to_string();
    if let Some(n) = cause.downcast_ref::<NodeError>() {
        return Some(n.clone());
    }
    if cause.downcast_ref::<BadInput>().is_some() {
        return Some(NodeError::BadInput(msg));
    }
    if let Some(c) = cause.downcast_ref::<ControlError>() {
        return Some(match c {
            ControlError::BadInput(_) => NodeError::BadInput(msg),
            ControlError::Mounted => NodeError::Busy(msg),
            _ => NodeError::Control(msg),
        });
    }
    match cause.downcast_ref::<StoreError>() {
        Some(StoreError::Unreachable { .. } | StoreError::Cancelled) => return Some(NodeError::StoreUnreachable(msg)),
        Some(_) => return None,
        None => {}
    }
    cause.downcast_ref::<std::io::Error>().map(|_| NodeError::Io(msg))
}

impl From<anyhow::Error> for NodeError {
    /// The kind the outermost cause that says one says (a [`NodeError`] inside keeps its
    /// kind); [`NodeError::Failed`] when none does.
    fn from(e: anyhow::Error) -> Self {
        let msg = format!("{e:#}");
        e.chain().find_map(|cause| kind_of(cause, &msg)).unwrap_or(NodeError::Failed(msg))
    }
}

impl From<ControlError> for NodeError {
    fn from(e: ControlError) -> Self {
        NodeError::from(anyhow::Error::from(e))
    }
}

/// Run `f` and give its error its kind: how the library's `anyhow` inside meets the typed
/// surface.
pub(crate) fn typed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> NodeResult<T> {
    f().map_err(NodeError::from)
}

/// Exit code 2 for bad input (here or in a mount process) or an unknown volume, 1 for every
/// other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|cause| kind_of(cause, "")).map_or(1, |k| k.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_chain_is_sorted_into_the_kind_its_cause_says() {
        let e = anyhow::Error::from(BadInput("bad size".into())).context("format v");
        assert_eq!(NodeError::from(e), NodeError::BadInput("format v: bad size".into()));
        let store = StoreError::Unreachable { endpoint: "http://127.0.0.1:9".into(), msg: "refused".into() };
        let e = anyhow::Error::from(store).context("push");
        assert!(matches!(NodeError::from(e), NodeError::StoreUnreachable(m) if m.starts_with("push: ")));
        let e: anyhow::Result<()> = Err(std::io::Error::other("disk on fire")).context("read volume.json");
        assert!(matches!(NodeError::from(e.unwrap_err()), NodeError::Io(_)));
        assert_eq!(NodeError::from(ControlError::Mounted).exit_code(), 1);
        assert!(matches!(NodeError::from(ControlError::Mounted), NodeError::Busy(_)));
        let typed = anyhow::Error::from(NodeError::NotFound("no volume named x".into())).context("status");
        assert_eq!(NodeError::from(typed), NodeError::NotFound("no volume named x".into()), "a typed error keeps its kind");
        assert_eq!(NodeError::from(anyhow::anyhow!("boom")), NodeError::Failed("boom".into()));
    }

    #[test]
    fn exit_codes_follow_the_kind_through_context() {
        let e = anyhow::Error::from(NodeError::NotFound("no volume named x".into())).context("mount");
        assert_eq!(exit_code(&e), 2);
        let e = anyhow::Error::from(ControlError::BadInput("no snapshot s".into())).context("snapshot show");
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
    }
}
