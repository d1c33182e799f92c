//! The `--once-per` schedule slot, as pure values: which slot a moment falls in, how long its
//! record is kept, the record itself and its transitions. `run::claim` writes them to etcd.
//!
//! A record is `running` from the claim until the run ends, then `done` (CMD ended, whatever its
//! code) or `lost` (leadership was lost mid-run and CMD was stopped); both are final. A slot
//! whose record exists is taken — whatever its state — unless the record is our own claim that
//! committed although its reply was lost (same fencing token, still `running`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One `--once-per` schedule slot: wall-clock time floored to the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start_unix: u64,
    pub period: Duration,
}

impl Slot {
    /// The slot containing `now`.
    pub fn containing(now: SystemTime, period: Duration) -> Slot {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let p = period.as_secs().max(1);
        Slot {
            start_unix: secs - secs % p,
            period,
        }
    }

    /// How long a slot record is kept after it was last written (it is bound to a lease of
    /// this TTL): two periods plus the wait, at least a minute, so every replica whose timer
    /// fired in this slot still finds the record however long it waited.
    pub fn retention(&self, wait: Duration) -> Duration {
        (self.period * 2 + wait).max(Duration::from_secs(60))
    }
}

/// The state of a slot's run, as recorded in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Running,
    Done,
    /// Leadership was lost mid-run and CMD was stopped (best effort: written only while our
    /// leader key still exists).
    Lost,
}

/// The JSON value at [`crate::election::keys::slot_key`]: who ran the slot, when, and how it
/// ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub id: String,
    #[serde(default)]
    pub host: Option<String>,
    /// Slot start, unix seconds.
    pub slot: u64,
    /// Slot length in seconds.
    pub period_s: u64,
    /// The fencing token the run was made under.
    pub token: i64,
    pub started: String,
    pub state: SlotState,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
}

/// How a run ended, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// CMD ended on its own (or could not start: its code says why).
    Done { exit_code: i32, signal: Option<i32> },
    /// Leadership was lost and CMD was stopped; its code, if it was reaped.
    Lost {
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
}

/// Which lease the ended record is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndLease {
    /// A fresh one, so a finished record is kept [`Slot::retention`] after the end of the run.
    Fresh,
    /// The claim's (after a loss etcd is likely unreachable, and the claim's lease still
    /// keeps the slot taken for as long).
    Claim,
}

impl End {
    pub fn state(self) -> SlotState {
        match self {
            End::Done { .. } => SlotState::Done,
            End::Lost { .. } => SlotState::Lost,
        }
    }

    pub fn lease(self) -> EndLease {
        match self {
            End::Done { .. } => EndLease::Fresh,
            End::Lost { .. } => EndLease::Claim,
        }
    }
}

/// A record that has already ended cannot end again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the slot record is already {0:?}")]
pub struct AlreadyEnded(pub SlotState);

impl SlotRecord {
    /// What a claim writes: `id` runs `slot` under `token`, started `at` (RFC 3339).
    pub fn running(
        id: &str,
        host: Option<String>,
        slot: Slot,
        token: i64,
        at: String,
    ) -> SlotRecord {
        SlotRecord {
            id: id.to_string(),
            host,
            slot: slot.start_unix,
            period_s: slot.period.as_secs(),
            token,
            started: at,
            state: SlotState::Running,
            ended: None,
            exit_code: None,
            signal: None,
        }
    }

    /// The record once the run ended `at`: running → done or lost.
    pub fn ended(&self, end: End, at: String) -> Result<SlotRecord, AlreadyEnded> {
        if self.state != SlotState::Running {
            return Err(AlreadyEnded(self.state));
        }
        let (exit_code, signal) = match end {
            End::Done { exit_code, signal } => (Some(exit_code), signal),
            End::Lost { exit_code, signal } => (exit_code, signal),
        };
        Ok(SlotRecord {
            state: end.state(),
            ended: Some(at),
            exit_code,
            signal,
            ..self.clone()
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("invariant: SlotRecord serialises")
    }
}

/// What the record found at our slot's key means for our claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Our own claim under `token`, committed although its reply was lost: the slot is ours.
    Ours,
    /// Another run's record (or one we cannot read): the slot is taken.
    Taken(Option<SlotRecord>),
}

/// Judge the value found at the slot key when claiming under `token`.
pub fn found(value: &str, token: i64) -> Found {
    match serde_json::from_str::<SlotRecord>(value) {
        Ok(r) if r.token == token && r.state == SlotState::Running => Found::Ours,
        Ok(r) => Found::Taken(Some(r)),
        Err(_) => Found::Taken(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_059;
    const EXITED_0: End = End::Done {
        exit_code: 0,
        signal: None,
    };
    const LOST: End = End::Lost {
        exit_code: None,
        signal: None,
    };

    fn minute_slot() -> Slot {
        Slot::containing(
            UNIX_EPOCH + Duration::from_secs(T0),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn slot_table() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let secs = Duration::from_secs;
        #[rustfmt::skip]
        let cases: &[(&str, u64, u64, u64, u64, u64)] = &[
            // name,                     now,    period, wait, start,          retention
            ("a minute's slot",          T0,     60,     0,    1_700_000_040,  120),
            ("an hour's slot",           T0,     3600,   0,    1_699_999_200,  7200),
            ("a day's slot",             T0,     86_400, 0,    1_699_920_000,  172_800),
            ("at the slot's first second", 1_700_000_040, 60, 0, 1_700_000_040, 120),
            ("at its last second",       1_700_000_099, 60, 0, 1_700_000_040,  120),
            ("a 1 s slot keeps a minute", T0,    1,      0,    T0,             60),
            ("the wait is kept too",     T0,     60,     30,   1_700_000_040,  150),
            ("a long wait on a short slot", T0,  1,      90,   T0,             92),
        ];
        for (name, now, period, wait, start, retention) in cases {
            let slot = Slot::containing(at(*now), secs(*period));
            assert_eq!(slot.start_unix, *start, "{name}: start");
            assert_eq!(slot.period, secs(*period), "{name}: period");
            assert_eq!(
                slot.retention(secs(*wait)),
                secs(*retention),
                "{name}: retention"
            );
        }
    }

    #[test]
    fn record_transition_table() {
        let running =
            SlotRecord::running("a", Some("host-a".into()), minute_slot(), 42, "t0".into());
        let done = running.ended(EXITED_0, "t1".into()).unwrap();
        let lost = running.ended(LOST, "t1".into()).unwrap();
        use SlotState::*;
        type Want = Result<(SlotState, Option<i32>, Option<i32>, EndLease), AlreadyEnded>;
        #[rustfmt::skip]
        let cases: Vec<(&str, &SlotRecord, End, Want)> = vec![
            ("running, CMD exits 0",        &running, End::Done { exit_code: 0, signal: None },
                Ok((Done, Some(0), None, EndLease::Fresh))),
            ("running, CMD exits 3",        &running, End::Done { exit_code: 3, signal: None },
                Ok((Done, Some(3), None, EndLease::Fresh))),
            ("running, CMD killed by 9",    &running, End::Done { exit_code: 137, signal: Some(9) },
                Ok((Done, Some(137), Some(9), EndLease::Fresh))),
            ("running, lost, CMD reaped",   &running, End::Lost { exit_code: Some(143), signal: Some(15) },
                Ok((Lost, Some(143), Some(15), EndLease::Claim))),
            ("running, lost, not reaped",   &running, End::Lost { exit_code: None, signal: None },
                Ok((Lost, None, None, EndLease::Claim))),
            ("done is final",               &done, End::Done { exit_code: 1, signal: None },
                Err(AlreadyEnded(Done))),
            ("done cannot be lost",         &done, End::Lost { exit_code: None, signal: None },
                Err(AlreadyEnded(Done))),
            ("lost is final",               &lost, End::Done { exit_code: 0, signal: None },
                Err(AlreadyEnded(Lost))),
            ("lost cannot be lost again",   &lost, End::Lost { exit_code: None, signal: None },
                Err(AlreadyEnded(Lost))),
        ];
        for (name, from, end, want) in cases {
            let got = from
                .ended(end, "t2".into())
                .map(|r| (r.state, r.exit_code, r.signal, end.lease()));
            assert_eq!(got, want, "{name}");
            if let Ok(r) = from.ended(end, "t2".into()) {
                assert_eq!(r.ended.as_deref(), Some("t2"), "{name}: end time");
                let unchanged = SlotRecord {
                    state: Running,
                    ended: None,
                    exit_code: None,
                    signal: None,
                    ..r
                };
                assert_eq!(&unchanged, from, "{name}: who, slot and token are kept");
            }
        }
    }

    #[test]
    fn found_record_table() {
        let ours = SlotRecord::running("a", None, minute_slot(), 42, "t0".into());
        let theirs = SlotRecord::running("b", None, minute_slot(), 41, "t0".into());
        let ours_done = ours.ended(EXITED_0, "t1".into()).unwrap();
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Found)> = vec![
            ("our claim committed, reply lost", ours.to_json(), Found::Ours),
            ("another token's run",             theirs.to_json(), Found::Taken(Some(theirs.clone()))),
            ("our token, but already done",     ours_done.to_json(), Found::Taken(Some(ours_done.clone()))),
            ("not a record",                    "garbage".into(), Found::Taken(None)),
        ];
        for (name, value, want) in cases {
            assert_eq!(found(&value, 42), want, "{name}");
        }
        // The record's JSON is the documented one (README), with nulls for what is not known yet.
        let v: serde_json::Value = serde_json::from_str(&ours_done.to_json()).unwrap();
        assert_eq!(v["state"], "done");
        assert_eq!(v["period_s"], 60);
        assert_eq!(v["signal"], serde_json::Value::Null);
    }
}
