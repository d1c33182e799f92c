//! elect-run with an election of its own: campaign with its own lease; if another replica
//! leads (at the first election read, or when `--wait` runs out) exit [`exit::NOT_ELECTED`];
//! once elected, optionally claim the `--once-per` slot ([`super::claim`]); run CMD while the
//! role machine says we lead; when CMD ends, record the result, resign at once and exit with
//! CMD's code. If the machine says leadership is lost, CMD's process group is stopped first,
//! then the lease released, and the exit code is [`exit::LOST`].
//!
//! Invariants: CMD runs only after the machine emitted `StartChild` (and, with `--once-per`,
//! after the slot claim committed under the fencing token); it is stopped before the lease is
//! given up. "Unreachable" is decided on the monotonic clock: no election read within
//! `max(--wait, 5s)` ([`CONTACT_WAIT`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::claim::{Claimed, SlotStore};
use super::slots::{End, Slot};
use super::{CONTACT_WAIT, RunError, RunOptions, Signals, supervisor};
use crate::config::{Config, OnExit};
use crate::election::candidacy::{DEFAULT_PRIORITY, Policy};
use crate::election::etcd::EtcdBackend;
use crate::election::{DriverConfig, LeaderInfo, MemberInfo, NoTelemetry, Position};
use crate::exit;
use crate::leadership::source::Source;
use crate::leadership::{ElectionSource, ExitPolicy, Identity, Leadership, Next};
use crate::supervisor::Supervisor;

/// How the campaign ended.
enum Campaign {
    Elected { token: i64, leader: Box<LeaderInfo> },
    NotElected,
}

/// Campaigns with its own lease; the election is always left before returning.
pub(super) async fn run(
    config: &Config,
    opts: &RunOptions,
    signals: &mut Signals,
) -> Result<i32, RunError> {
    let started = Instant::now();
    let slot = opts
        .once_per
        .map(|p| Slot::containing(SystemTime::now(), p));
    let timing = config.timing();
    let backend = match EtcdBackend::connect(config).await {
        Ok(b) => b,
        Err(e) if e.is_fatal() => return Err(RunError::Etcd(e)),
        Err(e) => {
            debug!(error = %e, "etcd connect failed");
            return Err(RunError::Unreachable {
                endpoints: config.endpoints.join(","),
                within: Duration::from_millis(started.elapsed().as_millis() as u64),
            });
        }
    };
    let source = ElectionSource::start(
        &backend,
        DriverConfig {
            election: config.election.clone(),
            member: MemberInfo::new(&config.id, None),
            timing,
            observe_first: false,
            // One run: no preferences, and never handing a running job over.
            policy: Policy {
                priority: DEFAULT_PRIORITY,
                takeover_delay: None,
            },
            start_guard: config.start_guard,
        },
        Arc::new(NoTelemetry),
    );
    let identity = Identity {
        id: config.id.clone(),
        election: config.election.clone(),
    };
    let lead = Leadership::new(source, None, ExitPolicy::new(OnExit::Exit), identity).once();
    let slots = slot.map(|s| {
        SlotStore::new(
            backend.clone(),
            &config.election,
            s,
            opts.wait,
            timing.request_timeout,
        )
    });
    let mut run = EtcdRun {
        config,
        opts,
        lead,
        slots,
    };
    let result = run.go(started, signals).await;
    // Resign at once (CMD is already stopped or done): the next replica need not wait a TTL.
    match run.lead.into_source().shutdown().await {
        Ok(()) => debug!("election released"),
        Err(e) => debug!(error = %e, "election driver ended with an error"),
    }
    result
}

struct EtcdRun<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    lead: Leadership<ElectionSource, Supervisor>,
    /// With `--once-per`: this run's slot.
    slots: Option<SlotStore>,
}

impl EtcdRun<'_> {
    async fn go(&mut self, started: Instant, signals: &mut Signals) -> Result<i32, RunError> {
        let (token, leader) = match self.campaign(started, signals).await? {
            Campaign::Elected { token, leader } => (token, *leader),
            Campaign::NotElected => return Ok(exit::NOT_ELECTED),
        };
        let claimed = match &self.slots {
            Some(store) => {
                // Retry transient failures only while the role machine still lets us lead.
                let until = self.lead.role().deadline().unwrap_or_else(Instant::now);
                match store
                    .claim(&self.config.id, token, &leader.key, until)
                    .await?
                {
                    Some(c) => Some(c),
                    None => return Ok(exit::NOT_ELECTED),
                }
            }
            None => None,
        };
        self.supervise(token, claimed, signals).await
    }

    /// Wait until elected, or until it is clear we will not be.
    async fn campaign(
        &mut self,
        started: Instant,
        signals: &mut Signals,
    ) -> Result<Campaign, RunError> {
        let give_up_at = started + self.opts.wait;
        let unreachable_at = started + self.opts.wait.max(CONTACT_WAIT);
        let mut read_once = false;
        loop {
            let position = self.lead.source().observed().position;
            if matches!(
                position,
                Position::Waiting { .. } | Position::Leading { .. } | Position::Guarded { .. }
            ) {
                read_once = true;
            }
            // Leading once the start guard ends (a fraction of a second): wait for it.
            let guarded = matches!(position, Position::Guarded { .. });
            if read_once && !guarded && Instant::now() >= give_up_at {
                not_elected(&position, self.opts.wait);
                return Ok(Campaign::NotElected);
            }
            let timer = if let Position::Guarded { until } = position {
                until.max(give_up_at)
            } else if read_once {
                give_up_at
            } else {
                unreachable_at
            };
            match self.lead.next(signals.until(timer)).await {
                Next::Event(event) => {
                    if let Some((token, leader)) = self.lead.apply(event).await.elected {
                        return Ok(Campaign::Elected {
                            token,
                            leader: Box::new(leader),
                        });
                    }
                }
                Next::Input(Some(sig)) => {
                    info!(signal = %sig, "signal received before the command started; giving up");
                    return Ok(Campaign::NotElected);
                }
                Next::Input(None) if !read_once => {
                    return Err(RunError::Unreachable {
                        endpoints: self.config.endpoints.join(","),
                        within: self.opts.wait.max(CONTACT_WAIT),
                    });
                }
                Next::Input(None) => {}
                Next::SourceEnded(e) => return Err(RunError::Etcd(e)),
                Next::CommandEnded(_) => unreachable!("no command runs before the election"),
            }
        }
    }

    /// Run CMD while we lead; returns its exit code, or [`RunError::Lost`] after stopping it.
    async fn supervise(
        &mut self,
        token: i64,
        claimed: Option<Claimed>,
        signals: &mut Signals,
    ) -> Result<i32, RunError> {
        let (command, watchdog) = supervisor(self.config, self.opts, true)?;
        self.lead.set_command(command);
        self.lead.set_watchdog(watchdog);
        let extra = match &self.slots {
            Some(store) => vec![("ELECTD_SLOT".into(), store.slot.start_unix.to_string())],
            None => Vec::new(),
        };
        if let Err((code, why)) = self.lead.start_command(token, extra) {
            eprintln!("elect-run: {why}");
            self.finish(
                claimed,
                End::Done {
                    exit_code: code,
                    signal: None,
                },
            )
            .await;
            return Ok(code);
        }
        loop {
            match self.lead.next(signals.recv()).await {
                Next::Event(event) => {
                    if let Some(lost) = self.lead.apply(event).await.lost {
                        warn!(
                            reason = lost.reason,
                            "leadership lost; the command was stopped"
                        );
                        let end = End::Lost {
                            exit_code: lost.exit.map(|e| e.code),
                            signal: lost.exit.and_then(|e| e.signal),
                        };
                        self.finish(claimed, end).await;
                        return Err(RunError::Lost {
                            reason: lost.reason,
                        });
                    }
                }
                Next::Input(sig) => self.lead.forward(sig),
                Next::CommandEnded(exit) => {
                    let end = End::Done {
                        exit_code: exit.code,
                        signal: exit.signal,
                    };
                    self.finish(claimed, end).await;
                    return Ok(exit.code);
                }
                Next::SourceEnded(e) => {
                    self.lead.stop_command().await;
                    return Err(RunError::Lost {
                        reason: format!("the election driver stopped: {e}"),
                    });
                }
            }
        }
    }

    /// Record the end of a claimed slot's run, if there is one.
    async fn finish(&self, claimed: Option<Claimed>, end: End) {
        if let (Some(store), Some(c)) = (&self.slots, claimed) {
            store.finish(c, end).await;
        }
    }
}

fn not_elected(position: &Position, wait: Duration) {
    let waited = humantime::format_duration(wait);
    match position {
        Position::Waiting {
            leader: Some(leader),
        } => info!(
            leader = %leader.id, token = leader.create_revision, waited = %waited,
            "not elected: another replica leads; command not run"
        ),
        _ => info!(waited = %waited, "not elected; command not run"),
    }
}
