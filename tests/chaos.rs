//! Chaos invariant test: five daemons wrapping children that write a ledger, a seeded random
//! schedule of real faults, and a checker:
//! - no two children's run intervals overlap;
//! - fencing tokens never go backwards from one run to the next;
//! - a leader exists again within TTL + a few seconds after each fault heals;
//! - a flap of the leader's link shorter than the grace never restarts its child.
//!
//! `ELECTD_CHAOS_FAULTS=N` runs N faults (default 8, about a minute); `ELECTD_CHAOS_SEED=S`
//! replays a schedule. The seed is printed at the start and again on failure.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// xorshift64*: a tiny seeded generator, so a failing schedule can be replayed exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("chaos test FAILED with ELECTD_CHAOS_SEED={}", self.0);
        }
    }
}

const REPLICAS: usize = 5;
const TTL: Duration = Duration::from_secs(3);

struct Replica {
    daemon: Daemon,
    proxies: Vec<TcpProxy>,
}

impl Replica {
    fn cut(&self, mode: ProxyMode) {
        for p in &self.proxies {
            p.set_mode(mode);
        }
    }
}

fn live(replicas: &[Replica]) -> Vec<&Daemon> {
    replicas.iter().map(|r| &r.daemon).collect()
}

/// Wait for one agreed leader among the daemons that answer; returns its index.
fn wait_leader(replicas: &[Replica], within: Duration, after: &str) -> usize {
    let mut found = None;
    wait_until(within, &format!("one agreed leader after {after}"), || {
        let ds = live(replicas);
        let leading: Vec<usize> = (0..ds.len()).filter(|i| ds[*i].is_leader()).collect();
        if leading.len() != 1 {
            return false;
        }
        let id = ds[leading[0]].id().to_string();
        let ok = ds.iter().all(|d| match d.role() {
            None => true,
            Some(r) => r["leader"]["id"].as_str() == Some(id.as_str()),
        });
        if ok {
            found = Some(leading[0]);
        }
        ok
    });
    found.expect("set on success")
}

#[test]
fn chaos_never_two_children_at_once() {
    let seed = std::env::var("ELECTD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let faults: usize = std::env::var("ELECTD_CHAOS_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("chaos: ELECTD_CHAOS_SEED={seed} ELECTD_CHAOS_FAULTS={faults}");
    let _report = SeedReport(seed);
    let mut rng = Rng(seed);

    let mut cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            let proxies: Vec<TcpProxy> = cluster
                .endpoints()
                .iter()
                .map(|e| TcpProxy::start_to(e))
                .collect();
            let endpoints: Vec<String> = proxies.iter().map(|p| p.endpoint()).collect();
            let daemon = DaemonSpec::new(&endpoints.join(","), "chaos", &format!("n{i}"))
                .ttl("3s")
                .sh(&ticking_script(&l))
                .start();
            Replica { daemon, proxies }
        })
        .collect();
    wait_leader(&replicas, Duration::from_secs(15), "start");

    let heal_bound = TTL + Duration::from_secs(5);
    for n in 0..faults {
        let leader = wait_leader(&replicas, heal_bound, "the previous fault");
        // Half the faults hit the leader, the rest a random replica.
        let target = if rng.below(2) == 0 {
            leader
        } else {
            rng.below(REPLICAS as u64) as usize
        };
        let kind = rng.below(5);
        let before = ledger(&l);
        let id = replicas[target].daemon.id().to_string();
        match kind {
            0 => {
                let down = rng.millis(500, 2500);
                eprintln!("fault {n}: kill -9 {id}, restart after {down:?}");
                replicas[target].daemon.kill9();
                std::thread::sleep(down);
                replicas[target].daemon.restart();
            }
            1 => {
                let frozen = rng.millis(500, 5000);
                eprintln!("fault {n}: SIGSTOP {id} for {frozen:?}");
                replicas[target].daemon.signal(Signal::SIGSTOP);
                std::thread::sleep(frozen);
                replicas[target].daemon.signal(Signal::SIGCONT);
            }
            2 => {
                // Shorter than the flap budget (TTL 3s, grace 1s: 1.7 s after the last
                // successful keepalive, sent at most 0.5 s before the cut).
                let cut = rng.millis(200, 700);
                eprintln!("fault {n}: short flap of {id}'s link for {cut:?}");
                let token = replicas[target].daemon.fencing_token();
                let was_leader = target == leader;
                replicas[target].cut(ProxyMode::Blackhole);
                std::thread::sleep(cut);
                replicas[target].cut(ProxyMode::Pass);
                if was_leader {
                    std::thread::sleep(Duration::from_secs(1));
                    let after = ledger(&l);
                    assert_eq!(
                        starts(&after).len(),
                        starts(&before).len(),
                        "a {cut:?} flap restarted or moved the leader's child (seed {seed})"
                    );
                    assert!(
                        replicas[target].daemon.is_leader(),
                        "flap moved leadership (seed {seed})"
                    );
                    assert_eq!(replicas[target].daemon.fencing_token(), token);
                }
            }
            3 => {
                let cut = rng.millis(3500, 6000);
                eprintln!("fault {n}: partition {id} from etcd for {cut:?}");
                replicas[target].cut(ProxyMode::Blackhole);
                std::thread::sleep(cut);
                replicas[target].cut(ProxyMode::Pass);
            }
            _ => {
                let m = rng.below(3) as usize;
                let down = rng.millis(1000, 4000);
                eprintln!("fault {n}: kill etcd member {m} for {down:?}");
                cluster.member(m).kill();
                std::thread::sleep(down);
                cluster.member(m).restart();
                cluster.wait_healthy(Duration::from_secs(20));
            }
        }
        let healed = Instant::now();
        wait_leader(
            &replicas,
            heal_bound,
            &format!("fault {n} healed (seed {seed})"),
        );
        eprintln!("  leader again {:?} after healing", healed.elapsed());
        assert_no_overlap(&ledger(&l));
    }
    let records = ledger(&l);
    let total = starts(&records).len();
    eprintln!("chaos: {faults} faults, {total} child runs, no overlap");
    assert_no_overlap(&records);
    assert!(total >= 1);
}

/// The checker itself: two children of one election alive at once must be caught, both by the
/// exact start-time check and by the timeline.
#[test]
fn the_overlap_checker_catches_two_live_children() {
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let spawn = |id: &str, token: &str| {
        std::process::Command::new("sh")
            .args(["-c", &ticking_script(&l)])
            .env("ELECTD_ID", id)
            .env("ELECTD_FENCING_TOKEN", token)
            .env("ELECTD_ELECTION", "checker")
            .spawn()
            .unwrap()
    };
    let mut a = spawn("a", "1");
    wait_until(Duration::from_secs(5), "a's first tick", || {
        ledger(&l).len() >= 2
    });
    let mut b = spawn("b", "2");
    wait_until(Duration::from_secs(5), "b's start", || {
        starts(&ledger(&l)).len() == 2
    });
    std::thread::sleep(Duration::from_millis(200));
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let records = ledger(&l);
    assert!(
        records.iter().any(|r| r.what == "overlap" && r.id == "b"),
        "{records:?}"
    );
    let caught = std::panic::catch_unwind(|| assert_no_overlap(&records));
    assert!(
        caught.is_err(),
        "assert_no_overlap accepted two live children"
    );
    // Without the start-time record, the timeline alone still catches it.
    let timeline: Vec<Record> = records
        .into_iter()
        .filter(|r| r.what != "overlap")
        .collect();
    assert!(std::panic::catch_unwind(|| assert_no_overlap(&timeline)).is_err());
}
