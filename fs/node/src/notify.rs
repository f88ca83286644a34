//! systemd readiness (`sd_notify`): a unit with `Type=notify` starts the mount in the
//! foreground with `$NOTIFY_SOCKET` set to a datagram socket; the mount says `READY=1` once it
//! answers and `STOPPING=1` when its session ends. One datagram per message, sent without a
//! library (the protocol is a text datagram to that socket; a name starting with `@` is in the
//! abstract namespace). Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// The variable systemd sets for a `Type=notify` service.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Send `state` (`READY=1`, `STOPPING=1`, `STATUS=...`, newline-separated) to the service
/// manager, if there is one. A failure is logged, never fatal: the mount works without it.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os(SOCKET_ENV) else { return };
    let sent = send(&target.to_string_lossy(), state);
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state:?} to {}: {e}", target.to_string_lossy());
    }
}

fn send(target: &str, state: &str) -> std::io::Result<()> {
    let addr = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(target)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Say `READY=1` (with `status`) once `mp` is a hybridfs mount that answers; gives up after
/// 60 s (the mount then failed, and its process says why as it exits).
pub fn spawn_ready_when_mounted(mp: PathBuf, status: String) {
    if std::env::var_os(SOCKET_ENV).is_none() {
        return;
    }
    let _ = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
        for _ in 0..(60_000 / 20) {
            if crate::mount::is_hybridfs_mount(&mp) && std::fs::metadata(&mp).is_ok() {
                notify(&format!("READY=1\nSTATUS={status}"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("{} did not answer within 60 s: READY=1 not sent", mp.display());
    });
}

#[cfg(test)]
mod tests {
    use super::send;

    #[test]
    fn a_message_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("hybridfs-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
