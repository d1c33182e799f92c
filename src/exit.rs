//! Exit codes of both binaries and their subcommands, defined once (sysexits.h where one fits).

/// A subcommand's action was refused or changed nothing (`electd resign` on a follower).
pub const REFUSED: i32 = 1;
/// A command-line usage error (`EX_USAGE`).
pub const USAGE: i32 = 64;
/// etcd (or the local electd) cannot be reached or refused us for good (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: i32 = 69;
/// The OS refused something electd needs: a listener, the watchdog, signal handlers (`EX_OSERR`).
pub const OSERR: i32 = 71;
/// elect-run: not elected, `--wait` ran out, or the `--once-per` slot was taken (`EX_TEMPFAIL`).
pub const NOT_ELECTED: i32 = 75;
/// elect-run: leadership was lost while the command ran; the command was stopped.
pub const LOST: i32 = 76;
/// A configuration error: the message names the flag, variable or file key (`EX_CONFIG`).
pub const CONFIG: i32 = 78;
/// The wrapped command could not be found (the shell's convention).
pub const NOT_FOUND: i32 = 127;
/// The wrapped command could not be executed for another reason (the shell's convention).
pub const CANNOT_EXECUTE: i32 = 126;
