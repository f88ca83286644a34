//! Errors of the node library.
//!
//! Operations return `anyhow::Result` with context phrased for the person at the terminal (the
//! CLI prints the chain on one line). Two kinds are typed so that callers can act on them:
//! [`BadInput`] (the caller's fault: the CLI exits 2) and [`crate::control::ControlError`]
//! (what a mount process answered). [`exit_code`] is the one table from errors to exit codes.

/// An error that is the caller's fault (a bad name, size, URL or flag): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// `Err(BadInput(msg))`.
pub fn bad_input<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(BadInput(msg.into()).into())
}

/// Exit code 2 for bad input (here or in a mount process), 1 for every other failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let control_bad = e.downcast_ref::<crate::control::ControlError>().is_some_and(|c| c.is_bad_input());
    if e.downcast_ref::<BadInput>().is_some() || control_bad { 2 } else { 1 }
}
