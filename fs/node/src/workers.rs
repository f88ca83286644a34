//! Background work as named workers: the registry is core's ([`hybridfs_core::worker`]), so
//! that core's sealer and sync's fetchers and uploaders report into the same list as the
//! node's collector, metrics writer and control server. A mount's registry is its volume's
//! ([`hybridfs_core::Volume::workers`]); `hybridctl status` shows it.

pub use hybridfs_core::worker::*;
