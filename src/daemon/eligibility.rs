//! Whether this replica may lead, and why not. The reasons combine — an observer (priority 0)
//! never may; a failing health check forbids it until the check passes again; a rewound etcd
//! history until its revision passes the one seen — and the role machine hears only when the
//! answer changes.

use crate::election::role::Event;
use crate::health::Change;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligibility {
    /// Priority 0: never campaigns.
    observer: bool,
    /// Why the health check fails (or has not passed yet), while it does.
    health: Option<String>,
    /// Why the election driver refuses to lead (etcd's history rewound), while it does.
    history: Option<String>,
}

impl Eligibility {
    /// At start: an observer never may lead; with a health check, not before it passes.
    pub fn new(priority: u32, has_check: bool) -> Eligibility {
        Eligibility {
            observer: priority == 0,
            health: has_check.then(|| "health check has not passed yet".to_string()),
            history: None,
        }
    }

    pub fn eligible(&self) -> bool {
        self.reason().is_none()
    }

    /// Why this replica may not lead, if it may not.
    pub fn reason(&self) -> Option<String> {
        if self.observer {
            return Some("priority 0: this replica only observes".into());
        }
        self.history.clone().or_else(|| self.health.clone())
    }

    /// After a change of health: the new eligibility, and the event for the role machine when
    /// the answer changed.
    pub fn health(&self, change: &Change) -> (Eligibility, Option<Event>) {
        let mut next = self.clone();
        next.health = match change {
            Change::Healthy => None,
            Change::Unhealthy(why) => Some(why.clone()),
        };
        self.then(next)
    }

    /// After the election driver's refusal to lead changed (or not).
    pub fn refusal(&self, refusal: Option<&str>) -> (Eligibility, Option<Event>) {
        let mut next = self.clone();
        next.history = refusal.map(str::to_string);
        self.then(next)
    }

    fn then(&self, next: Eligibility) -> (Eligibility, Option<Event>) {
        let event = match (self.eligible(), next.eligible()) {
            (true, false) => Some(Event::Ineligible),
            (false, true) => Some(Event::Eligible),
            _ => None,
        };
        (next, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Health(Change),
        Refusal(Option<&'static str>),
    }

    /// Steps after each case's health steps: a rewound history on top.
    fn extra(name: &str) -> Vec<(Step, Option<Event>, Option<&'static str>)> {
        const REWOUND: &str = "etcd's history was rewound";
        if name.starts_with("an observer") {
            return vec![(
                Step::Refusal(Some(REWOUND)),
                None,
                Some("priority 0: this replica only observes"),
            )];
        }
        vec![
            // Healthy at the end of the case: the refusal makes it ineligible, and says why.
            (
                Step::Refusal(Some(REWOUND)),
                Some(Event::Ineligible),
                Some(REWOUND),
            ),
            (Step::Refusal(Some(REWOUND)), None, Some(REWOUND)),
            (Step::Refusal(None), Some(Event::Eligible), None),
        ]
    }

    #[test]
    fn eligibility_table() {
        let down = || Change::Unhealthy("health check failing: exit 1".into());
        type Case = (
            &'static str,
            u32,
            bool,
            Vec<(Change, Option<Event>, Option<&'static str>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "a checked replica starts ineligible and may lead once healthy",
                1,
                true,
                vec![
                    (Change::Healthy, Some(Event::Eligible), None),
                    (
                        down(),
                        Some(Event::Ineligible),
                        Some("health check failing: exit 1"),
                    ),
                    (down(), None, Some("health check failing: exit 1")),
                    (Change::Healthy, Some(Event::Eligible), None),
                ],
            ),
            (
                "an observer never may, whatever its health",
                0,
                true,
                vec![
                    (
                        Change::Healthy,
                        None,
                        Some("priority 0: this replica only observes"),
                    ),
                    (down(), None, Some("priority 0: this replica only observes")),
                ],
            ),
        ];
        for (name, priority, check, steps) in cases {
            let steps: Vec<(Step, Option<Event>, Option<&str>)> = steps
                .into_iter()
                .map(|(c, e, r)| (Step::Health(c), e, r))
                .collect();
            let steps = steps.into_iter().chain(extra(name));
            let mut e = Eligibility::new(priority, check);
            assert!(!e.eligible(), "{name}: starts ineligible");
            for (i, (step, event, reason)) in steps.into_iter().enumerate() {
                let (next, got) = match &step {
                    Step::Health(change) => e.health(change),
                    Step::Refusal(r) => e.refusal(*r),
                };
                assert_eq!(got, event, "{name}: step {i} event");
                assert_eq!(next.reason().as_deref(), reason, "{name}: step {i} reason");
                e = next;
            }
        }
        assert!(Eligibility::new(1, false).eligible());
    }
}
