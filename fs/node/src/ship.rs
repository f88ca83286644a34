//! `blocks_to_store = on-fsync`: the [`BlockShipper`] a volume's seals call before they commit
//! (`hybridfs_core::volume::ship` has the order): the new blocks go to the volume's object
//! store through the mount's one store ([`RemoteSlot`]), as a push sends them
//! ([`hybridfs_sync::ship_blocks`]), within [`SHIP_TIMEOUT`].

use crate::control::RemoteSlot;
use hybridfs_cloud::traffic::Purpose;
use hybridfs_core::types::BlockId;
use hybridfs_core::volume::BlockShipper;
use hybridfs_core::{FsError, Volume};
use hybridfs_sync::SyncError;
use std::sync::Arc;
use std::time::Duration;

/// How long one `fsync` (or close, or seal) waits for the store to take its blocks before it
/// fails with `EIO`: the requests in flight are aborted then, and the data stays staged on
/// this host. A store that refuses connections fails sooner, after the store client's retries
/// (about 6 s).
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct StoreShipper {
    remote: Arc<RemoteSlot>,
    timeout: Duration,
}

impl StoreShipper {
    pub(crate) fn new(remote: Arc<RemoteSlot>) -> StoreShipper {
        StoreShipper { remote, timeout: SHIP_TIMEOUT }
    }
}

impl BlockShipper for StoreShipper {
    fn ship(&self, vol: &Volume, ids: &[BlockId]) -> Result<(), FsError> {
        let store = &self.remote.config().store;
        let failed = |why: String| {
            FsError::io(format!("upload {} blocks to the store {store}", ids.len()), std::io::Error::other(why))
        };
        let token = self.remote.call_token();
        let remote = self.remote.for_call(&token, Purpose::Push).map_err(|e| failed(e.to_string()))?;
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let (cancel, timeout) = (token.clone(), self.timeout);
        // Bounds the whole upload: cancelling the call's token aborts its requests in flight
        // and stops the store client's retries.
        std::thread::Builder::new()
            .name("ship-deadline".into())
            .spawn(move || {
                if wait.recv_timeout(timeout) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    cancel.cancel();
                }
            })
            .map_err(|e| FsError::io("start the upload's deadline", e))?;
        let result = hybridfs_sync::ship_blocks(vol, &remote, ids);
        drop(done);
        match result {
            Ok(_) => Ok(()),
            Err(SyncError::Volume(e)) => Err(e),
            Err(_) if token.is_cancelled() && !self.remote.is_stopped() => {
                Err(failed(format!("the store did not take them within {timeout:?}; the data stays staged on this host")))
            }
            Err(e) => Err(failed(format!("{e}; the data stays staged on this host"))),
        }
    }
}
