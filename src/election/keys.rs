//! The one place etcd keys are built. The layout is etcd's own `concurrency` election:
//! candidates live under `<election>/`, each named by its lease id in lowercase hex, so
//! `etcdctl elect -l <election>` observes our leader.

/// The prefix every candidate key of `election` shares.
pub fn election_prefix(election: &str) -> String {
    format!("{election}/")
}

/// The candidate key of the session holding `lease` (Go's `%x` of an int64).
pub fn candidate_key(election: &str, lease: i64) -> String {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    format!("{}{hex}", election_prefix(election))
}

/// Where `elect-run --once-per` records schedule slots: beside, not inside, the election's
/// prefix, so slot records never count as candidates.
pub fn slot_key(election: &str, slot_start_unix: u64) -> String {
    format!("{election}.slots/{slot_start_unix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_key_matches_go_concurrency_layout() {
        assert_eq!(election_prefix("svc"), "svc/");
        assert_eq!(candidate_key("svc", 0x694d_1234_abcd), "svc/694d1234abcd");
        assert_eq!(candidate_key("/a/b", 255), "/a/b/ff");
        assert_eq!(candidate_key("x", -255), "x/-ff");
    }

    #[test]
    fn candidate_keys_are_under_the_prefix_and_slots_are_not() {
        let p = election_prefix("svc");
        assert!(candidate_key("svc", 42).starts_with(&p));
        assert!(!slot_key("svc", 60).starts_with(&p));
    }
}
