//! The one place etcd keys are built and read. The layout is etcd's own `concurrency`
//! election: candidates live under `<election>/`, each named by its lease id in lowercase hex,
//! so `etcdctl elect -l <election>` observes our leader. What counts as a candidate key is
//! decided here too ([`read_key`]): exactly that form, and nothing else under the prefix.

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

/// What a key under an election's prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `<election>/<lease hex>`, exactly as [`candidate_key`] writes it: the lease it names.
    Candidate { lease: i64 },
    /// A key of a nested election or its slot records (`<election>/sub/…`, `<election>/job.slots/…`
    /// — another election's business).
    Nested,
    /// Anything else under the prefix (`<election>/zzz`): written by hand or by another tool.
    Foreign,
    /// Not under the prefix at all.
    Outside,
}

/// What `key` is to `election`.
pub fn read_key(election: &str, key: &str) -> KeyKind {
    let Some(rest) = key.strip_prefix(&election_prefix(election)) else {
        return KeyKind::Outside;
    };
    if rest.contains('/') {
        return KeyKind::Nested;
    }
    let parsed = match rest.strip_prefix('-') {
        Some(neg) => u64::from_str_radix(neg, 16)
            .ok()
            .and_then(|v| 0i64.checked_sub_unsigned(v)),
        None => i64::from_str_radix(rest, 16).ok(),
    };
    match parsed {
        // The round trip rejects `+ff`, `FF`, `0ff`: only the form etcd's election writes.
        Some(lease) if candidate_key(election, lease) == key => KeyKind::Candidate { lease },
        _ => KeyKind::Foreign,
    }
}

/// Where `elect-run --once-per` records schedule slots: beside, not inside, the election's
/// prefix, so slot records never count as candidates.
pub fn slot_key(election: &str, slot_start_unix: u64) -> String {
    format!("{election}.slots/{slot_start_unix}")
}

/// The floor record of `election`: the highest etcd revision a replica has seen, written by a
/// replica that finds etcd's history rewound (rebuilt from empty, restored from an older
/// snapshot) and read by every replica before it campaigns. Beside the prefix, like the slot
/// records: a key under it would be read as a foreign candidate (and by etcd's own election as
/// one that leads).
pub fn floor_key(election: &str) -> String {
    format!("{election}.floor")
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
    fn only_keys_of_exactly_the_candidate_form_are_candidates() {
        use KeyKind::*;
        let cases: &[(&str, &str, KeyKind)] = &[
            (
                "svc",
                "svc/694d1234abcd",
                Candidate {
                    lease: 0x694d_1234_abcd,
                },
            ),
            ("svc", "svc/ff", Candidate { lease: 255 }),
            ("x", "x/-ff", Candidate { lease: -255 }),
            ("/a/b", "/a/b/ff", Candidate { lease: 255 }),
            // Nested elections and their slot records belong to them.
            ("svc", "svc/sub/694d1234abcd", Nested),
            ("svc", "svc/job.slots/1700000040", Nested),
            // Written by hand, or not etcd's formatting of a lease id.
            ("svc", "svc/zzz", Foreign),
            ("svc", "svc/FF", Foreign),
            ("svc", "svc/0ff", Foreign),
            ("svc", "svc/+ff", Foreign),
            ("svc", "svc/", Foreign),
            ("svc", "svc/ffffffffffffffffff", Foreign),
            // Other elections that share a string prefix, and slot records beside ours.
            ("svc", "svc2/ff", Outside),
            ("svc", "svc.slots/60", Outside),
            ("svc", "svc.floor", Outside),
        ];
        for (election, key, want) in cases {
            assert_eq!(read_key(election, key), *want, "{election} {key}");
        }
    }

    #[test]
    fn candidate_keys_are_under_the_prefix_and_slots_are_not() {
        let p = election_prefix("svc");
        assert!(candidate_key("svc", 42).starts_with(&p));
        assert!(!slot_key("svc", 60).starts_with(&p));
        assert_eq!(floor_key("svc"), "svc.floor");
        assert_eq!(read_key("svc", &floor_key("svc")), KeyKind::Outside);
    }
}
