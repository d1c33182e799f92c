//! The system-wide monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds: how deadlines cross a
//! process boundary. tokio's (and std's) `Instant` reads the same clock on Linux, but only as an
//! opaque value; another process on the host (the freeze watchdog, an app beside electd)
//! understands nanoseconds of `CLOCK_MONOTONIC`.

use nix::time::{ClockId, clock_gettime};
use tokio::time::Instant;

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> i128 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("invariant: CLOCK_MONOTONIC exists");
    ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128
}

/// `at` as nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns_at(at: Instant) -> i128 {
    let now = Instant::now();
    let ns = monotonic_ns();
    if at >= now {
        ns + at.duration_since(now).as_nanos() as i128
    } else {
        ns - now.duration_since(at).as_nanos() as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn instants_map_onto_the_system_clock() {
        let before = monotonic_ns();
        let at = monotonic_ns_at(Instant::now() + Duration::from_secs(2));
        let after = monotonic_ns();
        assert!(
            at >= before + 2_000_000_000 && at <= after + 2_000_000_000,
            "{before} {at} {after}"
        );
        let past = monotonic_ns_at(Instant::now() - Duration::from_millis(5));
        assert!(past < monotonic_ns() - 4_000_000);
    }
}
