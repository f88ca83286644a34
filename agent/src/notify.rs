//! systemd readiness for `hybrid-agent` (`Type=notify`): `READY=1` once the API listens,
//! `STOPPING=1` when a stop signal arrives. The protocol is one text datagram to
//! `$NOTIFY_SOCKET` (a name starting with `@` is in the abstract namespace); without it
//! nothing is sent. The mount's side is `hybridfs_node::notify` (this crate stays free of the
//! node library and its RocksDB).

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`, `STATUS=…`, one per line),
/// if there is one. Never fatal: a failure is logged.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os(SOCKET_ENV) else { return };
    let target = target.to_string_lossy();
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&*target),
    };
    if let Err(e) = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a)) {
        tracing::warn!("sd_notify {state:?} to {target}: {e}");
    }
}
