//! `hybrid-agent`: the home controller that rents burst nodes when on-prem saturates and
//! merges their work home every night, and the burst node role that mounts the volume there.
//!
//! A tour of the modules, from pure decisions to I/O:
//!
//! * [`config`] — the one TOML file; errors name the file, line and key.
//! * [`clock`] — injectable time ([`clock::ManualClock`] runs a day in seconds).
//! * [`window`] — daily windows in a time zone (burst 08:00-17:00, merge 17:30-07:30).
//! * [`scaler`] — when to rent and release: thresholds held for a period, with hysteresis.
//! * [`state`] — the controller's persisted state (intents saved before provider calls).
//! * [`provider`] — the provider trait and its implementations (`memory` for tests, `local`,
//!   `command`: a user's program speaking JSON, `ec2`).
//! * [`volume`] — volume operations behind `HomeVolume`/`NodeVolume` (today via `hybridctl`).
//! * [`controller`] — the reconcile step: sync, leaks, budget, scale, drain, terminate, merge,
//!   ledger.
//! * [`api`] — the controller's token-authenticated HTTP API (TCP and a unix socket).
//! * [`dashboard`] — the web page over the controller's state (login link, session cookie).
//! * [`notify`] — systemd readiness (`READY=1`, `STOPPING=1`).
//! * [`node`] — the burst node role: clone, mount, push, report, drain, dead-man switch.
//! * [`spot`] — a cloud node's spot interruption notices (IMDSv2 poller).

pub mod clock;
pub mod config;
pub mod scaler;
pub mod window;
pub mod state;
pub mod provider;
pub mod volume;
pub mod controller;
pub mod api;
pub mod dashboard;
pub mod node;
pub mod credentials;
pub mod notify;
pub mod spot;
