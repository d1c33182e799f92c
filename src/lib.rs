//! electd: a leader-election sidecar on etcd.
//!
//! # Layout
//! - [`config`] — TOML + `ELECTD_*` env + flags merged into one validated `Config`.
//! - [`cli`] — flags shared by both binaries; logging set-up.
//! - [`election`] — the algorithm on etcd (lease, candidate key, predecessor watch) in
//!   [`election::Driver`]; the pure role state machine in [`election::role`]; key layout in
//!   [`election::keys`].
//! - [`supervisor`] — the wrapped command: own process group, graceful stop, reap; the freeze
//!   watchdog process.
//! - [`daemon`] — the owner task that holds the role and carries out transitions.
//! - [`status`] — the published snapshot the API reads.
//! - [`api`] — one router served on TCP and on the Unix socket ([`api::serve`]: time and size
//!   limits per connection).
//! - [`metrics`] — Prometheus metrics.
//! - [`ctl`] — `electd status|resign|pause|resume`: the operator's client.
//! - [`run`] — `elect-run`: one command on exactly one replica, optionally once per slot.

pub mod api;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod election;
pub mod exit;
pub mod metrics;
pub mod run;
pub mod status;
pub mod supervisor;

/// The commit these sources were built from (12 hex digits, `-dirty` when `src/`, `build.rs` or
/// `Cargo.*` differed from it), or `unknown` outside a git checkout; set by `build.rs`.
pub const GIT_COMMIT: &str = env!("ELECTD_GIT_COMMIT");

/// What `--version` prints after the binary's name: `0.1.0 (commit 0123456789ab)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ELECTD_GIT_COMMIT"),
    ")"
);
