//! electd: a leader-election sidecar on etcd.
//!
//! # Layout
//! Data flows etcd → backend → view → role machine → actions → command / API / metrics; see
//! `docs/architecture.md`.
//! - [`config`] — TOML + `ELECTD_*` env + flags into one validated `Config`; every setting
//!   declared once in [`config::table`], each value parsed by [`config::parse`].
//! - [`cli`] — both binaries' command lines (setting flags generated from the table); logging.
//! - [`clock`] — `CLOCK_MONOTONIC` nanoseconds: deadlines that cross a process boundary.
//! - [`election`] — the backend-neutral contract (view, position, leader and member info,
//!   driver commands, telemetry), the pure role state machine ([`election::role`]), the key
//!   layout ([`election::keys`]), and the etcd backend ([`election::etcd`]: session, campaign,
//!   driver, transactions — the only code that uses the etcd client crate).
//! - [`leadership`] — the one loop that runs a command only while this replica leads, for
//!   electd and both elect-run modes: sources of leadership ([`leadership::source`]), the
//!   `--on-exit` policy as a pure value ([`leadership::policy`]), observers of role changes.
//! - [`health`] — health-gated candidacy: the check of the app beside electd, its rise/fall
//!   counter.
//! - [`supervisor`] — the wrapped command: own process group, graceful stop, reap; the freeze
//!   watchdog process.
//! - [`daemon`] — electd: listeners, the owner task (signals and control requests into the
//!   loop), the publisher of status and metrics.
//! - [`status`] — the published snapshot the API reads.
//! - [`api`] — one router served on TCP and on the Unix socket ([`api::serve`]: time and size
//!   limits per connection); the typed documents both sides (de)serialise ([`api::doc`]).
//! - [`proxy`] — the leader-following TCP proxy (`--proxy`) and its pure "may I route?".
//! - [`hooks`] — role-change hooks (`--on-role-change`), one at a time, never blocking.
//! - [`metrics`] — Prometheus metrics, fed by the election's telemetry and the publisher.
//! - [`ctl`] — `electd status|resign|pause|resume`: the operator's client.
//! - [`run`] — `elect-run`: one command on exactly one replica (its own election, or the local
//!   electd's socket), optionally once per schedule slot ([`run::slots`]).
//! - [`exit`] — every exit code, defined once.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod election;
pub mod exit;
pub mod health;
pub mod hooks;
pub mod leadership;
pub mod metrics;
pub mod proxy;
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
