//! The client side of the control API: [`call`] sends a request to the mount process of a
//! volume, or runs it here when the volume is not mounted.

use super::server::{execute, RemoteSlot};
use super::{ControlError, Envelope, Message, Reply, Request, PROTOCOL_VERSION};
use crate::home::VolumeDir;
use anyhow::{bail, Context, Result};
use hybridfs_sync::Progress;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Longest a request may take in the mount process (sealing a large dirty set, a big gc).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a status question ([`Request::Workers`]) waits.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Run `req` on volume `vd`: in its mount process when it is mounted, else here (taking the
/// volume's lock for the duration). A failure says its kind ([`crate::NodeError`]: a bad
/// request, refused while mounted, the control socket, the store); `progress` sees the
/// progress of long requests (push, merge's fetch, gc, rollback, pull).
pub fn call(vd: &VolumeDir, req: &Request, progress: &(dyn Fn(&Progress) + Sync)) -> crate::error::NodeResult<Reply> {
    crate::error::typed(|| {
        if let Some(state) = vd.mount_state() {
            return call_mounted(vd, state.pid, req, progress);
        }
        if let Request::Workers = req {
            return Err(ControlError::NotMounted.into());
        }
        let _lock = vd.lock()?;
        if let Request::Pull = req {
            // Only the metadata: the volume is not opened while a pull is unfinished.
            let meta = vd.open_meta(false)?;
            let remote = RemoteSlot::new(vd.config()?, crate::workers::Workers::new());
            let report = hybridfs_sync::clone::pull_reporting(&meta, &*remote.get()?, progress).map_err(ControlError::from)?;
            return Ok(Reply::Pull(report));
        }
        let (vol, remote) = vd.open_volume(Duration::from_secs(30))?;
        // Here the call ends with this process: nothing else cancels it.
        let result = execute(&vol, &remote, req, &remote.call_token(), progress);
        let flushed = vol.shutdown().context("flush the volume");
        vol.workers().stop();
        flushed?;
        Ok(result?)
    })
}

fn call_mounted(vd: &VolumeDir, pid: u32, req: &Request, progress: &(dyn Fn(&Progress) + Sync)) -> Result<Reply> {
    let path = vd.control_path();
    let mut conn = UnixStream::connect(&path)
        .with_context(|| format!("reach the mount process (pid {pid}) of volume {} at {}", vd.name, path.display()))?;
    // A status question must not hang on a mount process that does not answer.
    let timeout = if let Request::Workers = req { STATUS_TIMEOUT } else { REQUEST_TIMEOUT };
    conn.set_read_timeout(Some(timeout))?;
    let envelope = Envelope { version: PROTOCOL_VERSION, request: req.clone() };
    conn.write_all(serde_json::to_string(&envelope)?.as_bytes())?;
    conn.write_all(b"\n")?;
    let mut reader = BufReader::new(&conn);
    for _ in 0..10_000_000 {
        let mut line = String::new();
        reader.read_line(&mut line).context("read the mount process's answer")?;
        if line.is_empty() {
            bail!("the mount process (pid {pid}) closed the connection without answering (did it crash? see {})", vd.log_path().display());
        }
        match serde_json::from_str::<Message>(&line).context("parse the mount process's answer")? {
            Message::Progress(p) => progress(&p),
            Message::Done(result) => return Ok(result?),
        }
    }
    bail!("the mount process sent no answer")
}
