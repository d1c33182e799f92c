//! Scenario 7: many candidates in one election, in process: `electd::election::Driver` × N on
//! one tokio runtime and one etcd client. On each leader change (the leader's
//! `release(After::Stop)`), count who was woken and time the next `Position::Leading`.

use std::time::Duration;

use electd::config::Timing;
use electd::election::etcd::EtcdBackend;
use electd::election::{After, DriverConfig, DriverHandle, ElectionView, MemberInfo, Position};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use super::{BenchConfig, Section, Value, attempt};
use crate::common::{Etcd, etcd_metrics, metric_sum};

struct Candidate {
    /// Member id `c{id:04}`, in joining order.
    id: usize,
    handle: DriverHandle,
    view: watch::Receiver<ElectionView>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(backend: &EtcdBackend, timing: Timing, n: usize) -> Candidate {
    let (driver, handle, view) = backend.driver(DriverConfig {
        election: "scale".into(),
        member: MemberInfo::new(&format!("c{n:04}"), None),
        timing,
        observe_first: false,
        policy: electd::election::candidacy::Policy {
            priority: 1,
            takeover_delay: None,
        },
    });
    let task = tokio::spawn(async move {
        let _ = driver.run().await;
    });
    Candidate {
        id: n,
        handle,
        view,
        task,
    }
}

fn leading(v: &ElectionView) -> bool {
    matches!(v.position, Position::Leading { .. })
}

/// Exactly one leads and every other one waits behind that leader.
fn settled(cands: &[Candidate]) -> Option<usize> {
    let views: Vec<ElectionView> = cands.iter().map(|c| c.view.borrow().clone()).collect();
    let leaders: Vec<usize> = (0..views.len()).filter(|i| leading(&views[*i])).collect();
    let [l] = leaders[..] else { return None };
    let Position::Leading { token, .. } = views[l].position else {
        return None;
    };
    views
        .iter()
        .enumerate()
        .all(|(i, v)| {
            i == l
                || matches!(&v.position, Position::Waiting { leader: Some(x) } if x.create_revision == token)
        })
        .then_some(l)
}

async fn wait_settled(cands: &[Candidate], within: Duration) -> usize {
    let end = Instant::now() + within;
    loop {
        if let Some(l) = settled(cands) {
            return l;
        }
        assert!(
            Instant::now() < end,
            "{} candidates did not settle on one leader within {within:?}",
            cands.len()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// etcd's completed election reads (the driver reads the election in one Txn).
async fn txns(etcd_port: u16) -> f64 {
    tokio::task::spawn_blocking(move || {
        metric_sum(
            &etcd_metrics(etcd_port),
            "grpc_server_handled_total",
            &["grpc_method=\"Txn\""],
        )
    })
    .await
    .expect("metrics task")
}

#[derive(Default)]
struct Figures {
    to_leader: Vec<f64>,
    release: Vec<f64>,
    wakeups: Vec<f64>,
    rereads: Vec<f64>,
    txns: Vec<f64>,
    settle: f64,
    failures: Vec<String>,
}

async fn run(cfg: &BenchConfig, etcd: &Etcd) -> Figures {
    let n = cfg.scale_candidates;
    let timing = Timing::new(cfg.scale_ttl, Duration::ZERO);
    let backend = EtcdBackend::connect_endpoints(&[etcd.endpoint()])
        .await
        .expect("connect to etcd");
    let mut f = Figures::default();
    let t = Instant::now();
    let mut cands: Vec<Candidate> = (0..n).map(|i| spawn(&backend, timing, i)).collect();
    let mut next = n;
    wait_settled(&cands, Duration::from_secs(60)).await;
    f.settle = t.elapsed().as_secs_f64();
    cfg.progress(&format!(
        "scale: {n} candidates settled in {:.1} s",
        f.settle
    ));
    let port = etcd.client_port();
    // Metrics pages are not gRPC, but let one keepalive round pass to start clean.
    sleep(Duration::from_millis(200)).await;
    for i in 0..cfg.iterations {
        let it = async {
            let l = wait_settled(&cands, Duration::from_secs(30)).await;
            let before: Vec<(u64, i64)> = cands
                .iter()
                .map(|c| {
                    let v = c.view.borrow();
                    (v.wakeups, v.revision)
                })
                .collect();
            let txn_before = txns(port).await;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut waiters = tokio::task::JoinSet::new();
            for (j, c) in cands.iter().enumerate() {
                if j == l {
                    continue;
                }
                let (mut view, tx) = (c.view.clone(), tx.clone());
                waiters.spawn(async move {
                    if view.wait_for(leading).await.is_ok() {
                        let _ = tx.send((j, Instant::now()));
                    }
                });
            }
            let t0 = Instant::now();
            cands[l].handle.release(After::Stop).await;
            let released = t0.elapsed();
            let (new, at) = timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("a new leader within 20 s")
                .expect("waiters alive");
            // Let every reaction to the change finish before counting.
            sleep(Duration::from_millis(700)).await;
            waiters.abort_all();
            let txn_after = txns(port).await;
            let mut wakeups = 0;
            let mut rereads = 0;
            for (j, c) in cands.iter().enumerate() {
                if j == l {
                    continue;
                }
                let v = c.view.borrow();
                wakeups += v.wakeups - before[j].0;
                rereads += usize::from(v.revision > before[j].1);
            }
            let ms = at.duration_since(t0).as_secs_f64() * 1e3;
            f.to_leader.push(ms);
            f.release.push(released.as_secs_f64() * 1e3);
            f.wakeups.push(wakeups as f64);
            f.rereads.push(rereads as f64);
            f.txns.push(txn_after - txn_before);
            cfg.progress(&format!(
                "scale #{i}: new leader c{:04} after {ms:.1} ms; {wakeups} predecessor \
                 wake-ups, {rereads} re-reads, {} election reads at etcd",
                cands[new].id,
                txn_after - txn_before
            ));
            // Replace the one that left, at the back of the queue.
            let gone = cands.remove(l);
            let _ = gone.task.await;
            cands.push(spawn(&backend, timing, next));
            next += 1;
        };
        if let Err(e) = timeout(Duration::from_secs(90), it).await {
            f.failures.push(format!("leader change #{i}: {e}"));
            break;
        }
    }
    for c in &cands {
        c.handle.release(After::Stop).await;
    }
    f
}

pub fn scale(cfg: &BenchConfig) -> Section {
    let mut s = Section::new(
        "scale",
        &format!("Scale: {} candidates", cfg.scale_candidates),
        &format!(
            "{} `electd::election::Driver`s campaign in one election on one tokio runtime with \
             one etcd client (TTL {} s), in the benchmark process. {} times, the leader calls \
             `release(After::Stop)` (revoke its lease) and a new candidate joins at the back. \
             Woken: the drop in `ElectionView.wakeups` (predecessor watch fired) and the \
             candidates whose view's revision moved (they received a watch event and re-read \
             the election); etcd's completed `Txn` calls in the 0.7 s after the change count \
             those reads at the server.",
            cfg.scale_candidates,
            cfg.scale_ttl.as_secs(),
            cfg.iterations
        ),
        ["electd (in-process drivers)", "—"],
    );
    s.expected = cfg.iterations;
    let result = attempt(|| {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let f = rt.block_on(run(cfg, &etcd));
        rt.shutdown_timeout(Duration::from_secs(5));
        f
    });
    let mut f = match result {
        Ok(x) => x,
        Err(e) => {
            s.failures.push(e);
            return s;
        }
    };
    s.failures.append(&mut f.failures);
    let one = |v: Vec<f64>| [Value::Samples(v), Value::Missing];
    s.push(
        "to_leader",
        "release called → next candidate sees `Position::Leading`",
        "ms",
        false,
        one(f.to_leader),
    );
    s.push(
        "release",
        "the release (lease revoke) call itself",
        "ms",
        false,
        one(f.release),
    );
    s.push(
        "wakeups",
        "candidates woken by their predecessor watch",
        "candidates",
        false,
        one(f.wakeups),
    );
    s.push(
        "rereads",
        "candidates that received a watch event and re-read the election",
        "candidates",
        false,
        one(f.rereads),
    );
    s.push(
        "txns",
        "election reads (`Txn`) served by etcd after the change",
        "requests",
        false,
        one(f.txns),
    );
    s.notes.push(format!(
        "{} candidates settled on one leader {:.1} s after they were started.",
        cfg.scale_candidates, f.settle
    ));
    s
}
