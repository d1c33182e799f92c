//! What etcd itself says happened, read back after the run: the election's key history (etcd
//! keeps every revision unless compacted, and the test never compacts), point-in-time reads,
//! and a clock that ties revisions to wall time.
//!
//! etcd stores no timestamps. A [`Clock`] puts one key every 50 ms through each member
//! (straight, no proxy) and notes, for each put, its send time, reply time and revision. Any
//! revision R then happened after the latest send of a put with a smaller revision and before
//! the earliest reply of a put with a larger one: [`Clocked::lower`] and [`Clocked::upper`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, EventType, GetOptions, SortOrder, SortTarget, WatchOptions};

pub const CLOCK_KEY: &str = "chaos-clock";
const END_KEY: &str = "chaos-end";

/// Wall-clock nanoseconds since the epoch, as the children's `date +%s%N`.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(endpoints: &[String]) -> Client {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(opts))
        .await
        .expect("connect to etcd")
}

/// One clock put: sent, answered (ns since the epoch) and its revision.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub rev: i64,
    pub sent: u128,
    pub replied: u128,
}

pub struct Clock {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Clock {
    /// One writer per endpoint, so a frozen or cut-off member stalls only its own writer.
    pub fn start(endpoints: Vec<String>) -> Clock {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("chaos-clock".into())
            .spawn(move || {
                runtime().block_on(async move {
                    let writers: Vec<_> = endpoints
                        .into_iter()
                        .map(|e| tokio::spawn(write_clock(e, stop2.clone())))
                        .collect();
                    let mut samples = Vec::new();
                    for w in writers {
                        samples.extend(w.await.expect("clock writer"));
                    }
                    samples
                })
            })
            .expect("spawn clock thread");
        Clock {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("clock thread")
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_clock(endpoint: String, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut client = connect(std::slice::from_ref(&endpoint)).await;
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let sent = now_ns();
        let put = client.put(CLOCK_KEY, sent.to_string(), None);
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(1), put).await
            && let Some(h) = resp.header()
        {
            samples.push(Sample {
                rev: h.revision(),
                sent,
                replied: now_ns(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// Revisions mapped to wall-time bounds.
pub struct Clocked {
    samples: Vec<Sample>,
}

impl Clocked {
    pub fn new(mut samples: Vec<Sample>) -> Clocked {
        samples.sort_by_key(|s| s.rev);
        Clocked { samples }
    }

    /// A time revision `rev` certainly came after (ns), if a clock put preceded it.
    pub fn lower(&self, rev: i64) -> Option<u128> {
        let i = self.samples.partition_point(|s| s.rev < rev);
        self.samples[..i].iter().map(|s| s.sent).max()
    }

    /// A time revision `rev` certainly came before (ns), if a clock put followed it.
    pub fn upper(&self, rev: i64) -> Option<u128> {
        let i = self.samples.partition_point(|s| s.rev <= rev);
        self.samples[i..].iter().map(|s| s.replied).min()
    }

    /// Width of the bounds around each sample's revision, for the report.
    pub fn resolution(&self) -> Vec<u128> {
        self.samples
            .windows(3)
            .map(|w| w[2].replied.saturating_sub(w[0].sent))
            .collect()
    }
}

/// A create or delete of a key under the election's prefix.
#[derive(Clone, Debug)]
pub struct KeyEvent {
    pub rev: i64,
    pub key: String,
    /// Put (with its create revision and value) or delete.
    pub put: Option<(i64, Vec<u8>)>,
}

/// Every event under `prefix` since revision 1, read by a watch that replays history until it
/// reaches a marker written now.
pub fn read_history(endpoints: &[String], prefix: &str) -> Vec<KeyEvent> {
    runtime().block_on(async {
        let mut client = connect(endpoints).await;
        let marker = client
            .put(END_KEY, "", None)
            .await
            .expect("put the end marker")
            .header()
            .expect("header")
            .revision();
        let mut stream = client
            .watch(
                "",
                Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
            )
            .await
            .expect("watch from revision 1");
        let mut events = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("history replay stalled")
                .expect("watch")
                .expect("watch stream ended");
            assert!(
                !msg.canceled(),
                "history watch canceled (compacted?): {}",
                msg.cancel_reason()
            );
            let mut done = false;
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                done |= kv.mod_revision() >= marker;
                let key = kv.key_str().unwrap_or_default();
                if !key.starts_with(prefix) {
                    continue;
                }
                events.push(KeyEvent {
                    rev: kv.mod_revision(),
                    key: key.to_string(),
                    put: (ev.event_type() == EventType::Put)
                        .then(|| (kv.create_revision(), kv.value().to_vec())),
                });
            }
            if done {
                return events;
            }
        }
    })
}

/// For each revision: the lowest-create-revision key under `prefix` at that revision (key,
/// create revision), as `etcdctl get --prefix --rev=R --sort-by=create` shows it, passing over
/// keys that carry the clean-release mark (released: no longer candidates, deleted next).
pub fn lowest_at(
    endpoints: &[String],
    prefix: &str,
    revs: impl IntoIterator<Item = i64>,
) -> BTreeMap<i64, Option<(String, i64)>> {
    runtime().block_on(async {
        let mut client = connect(endpoints).await;
        let mut out = BTreeMap::new();
        for rev in revs {
            let opts = GetOptions::new()
                .with_prefix()
                .with_revision(rev)
                .with_sort(SortTarget::Create, SortOrder::Ascend);
            let resp = client
                .get(prefix, Some(opts))
                .await
                .unwrap_or_else(|e| panic!("get {prefix} at revision {rev}: {e}"));
            let released = |v: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(v).is_ok_and(|d| d["released"] == true)
            };
            let lowest = resp
                .kvs()
                .iter()
                .find(|kv| !released(kv.value()))
                .map(|kv| {
                    (
                        kv.key_str().unwrap_or_default().to_string(),
                        kv.create_revision(),
                    )
                });
            out.insert(rev, lowest);
        }
        out
    })
}

/// One key's time as the leader key: from the revision it became the lowest create revision
/// under the prefix to the revision it was deleted (None: still there at the end).
#[derive(Clone, Debug, PartialEq)]
pub struct Lead {
    pub key: String,
    pub create_rev: i64,
    pub from_rev: i64,
    pub until_rev: Option<i64>,
    /// The `id` in the key's value (electd publishes its member info there).
    pub id: Option<String>,
    /// Its leadership ended with the clean-release mark (a put of the key with `"released":
    /// true`, before the revoke): its command was stopped before that. Otherwise it ended by the
    /// key's deletion alone (expired, revoked, deleted by hand), and the successor waits its start
    /// guard.
    pub released: bool,
}

/// Who was the leader key when, from the key events.
pub fn leads(events: &[KeyEvent]) -> Vec<Lead> {
    let mut live: BTreeMap<i64, String> = BTreeMap::new();
    let mut created: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
    let mut out: Vec<Lead> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let rev = events[i].rev;
        // Keys released with the mark at this revision (they leave the queue then).
        let mut released_now = Vec::new();
        // One revision may hold several events (a lease revoke deletes all its keys at once).
        while i < events.len() && events[i].rev == rev {
            let e = &events[i];
            match &e.put {
                Some((create_rev, value)) => {
                    let doc = serde_json::from_slice::<serde_json::Value>(value).ok();
                    let id = doc
                        .as_ref()
                        .and_then(|v| v["id"].as_str().map(str::to_string));
                    if doc.as_ref().is_some_and(|v| v["released"] == true) {
                        live.remove(create_rev);
                        released_now.push(*create_rev);
                    } else {
                        live.insert(*create_rev, e.key.clone());
                    }
                    created.insert(e.key.clone(), (*create_rev, id));
                }
                None => {
                    if let Some((create_rev, _)) = created.get(&e.key) {
                        live.remove(create_rev);
                    }
                }
            }
            i += 1;
        }
        let lowest = live.iter().next().map(|(c, k)| (*c, k.clone()));
        let current = out.last().filter(|l| l.until_rev.is_none());
        if current.map(|l| l.create_rev) != lowest.as_ref().map(|(c, _)| *c) {
            if let Some(l) = out.last_mut().filter(|l| l.until_rev.is_none()) {
                l.until_rev = Some(rev);
                l.released = released_now.contains(&l.create_rev);
            }
            if let Some((create_rev, key)) = lowest {
                let id = created.get(&key).and_then(|(_, id)| id.clone());
                out.push(Lead {
                    key,
                    create_rev,
                    from_rev: rev,
                    until_rev: None,
                    id,
                    released: false,
                });
            }
        }
    }
    out
}

#[test]
fn leads_follow_the_lowest_create_revision() {
    let put = |rev, key: &str, create, id: &str| KeyEvent {
        rev,
        key: key.into(),
        put: Some((create, format!("{{\"id\":\"{id}\"}}").into_bytes())),
    };
    let del = |rev, key: &str| KeyEvent {
        rev,
        key: key.into(),
        put: None,
    };
    let events = vec![
        put(5, "e/a", 5, "n0"),
        put(6, "e/b", 6, "n1"),
        put(7, "e/a", 5, "n0"), // an update keeps the create revision and the lead
        del(9, "e/a"),
        del(12, "e/b"),
        put(12, "e/c", 12, "n2"), // one revision, two events
    ];
    let l = leads(&events);
    let short: Vec<(&str, i64, i64, Option<i64>)> = l
        .iter()
        .map(|l| (l.key.as_str(), l.create_rev, l.from_rev, l.until_rev))
        .collect();
    assert_eq!(
        short,
        vec![
            ("e/a", 5, 5, Some(9)),
            ("e/b", 6, 9, Some(12)),
            ("e/c", 12, 12, None)
        ]
    );
    assert_eq!(l[1].id.as_deref(), Some("n1"));
    assert!(!l[0].released && !l[1].released);
    // A clean release: the mark ends the lead at once (the key is deleted after), and the
    // same key name under a new create revision is another lead.
    let mark = |rev, key: &str, create| KeyEvent {
        rev,
        key: key.into(),
        put: Some((create, b"{\"id\":\"n2\",\"released\":true}".to_vec())),
    };
    let mut events = events;
    events.extend([
        put(13, "e/d", 13, "n3"),
        mark(14, "e/c", 12),
        del(15, "e/c"),
        put(16, "e/c", 16, "n2"),
        del(17, "e/d"),
    ]);
    let l = leads(&events);
    let short: Vec<(&str, i64, i64, Option<i64>, bool)> = l
        .iter()
        .map(|l| {
            (
                l.key.as_str(),
                l.create_rev,
                l.from_rev,
                l.until_rev,
                l.released,
            )
        })
        .collect();
    assert_eq!(
        short[2..],
        [
            ("e/c", 12, 12, Some(14), true),
            ("e/d", 13, 14, Some(17), false),
            ("e/c", 16, 17, None, false),
        ]
    );
}

#[test]
fn clock_bounds_bracket_a_revision() {
    let c = Clocked::new(vec![
        Sample {
            rev: 10,
            sent: 100,
            replied: 110,
        },
        Sample {
            rev: 20,
            sent: 150,
            replied: 160,
        },
    ]);
    assert_eq!(c.lower(15), Some(100));
    assert_eq!(c.upper(15), Some(160));
    assert_eq!(c.lower(10), None);
    assert_eq!(c.upper(20), None);
    assert_eq!(c.upper(10), Some(160));
}
