//! A region's health as the router sees it: a pure state machine fed one check result at a time.
//! A healthy region goes out after `fall` failed checks in a row and an unhealthy one comes back
//! after `rise` passed checks in a row; anything short of a full run changes nothing, so a region
//! failing now and then is not flapped in and out. No I/O here: the polling is `probe.rs`.

use serde::Serialize;

/// Where a region stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not checked yet: not routed to. The first check decides directly, as there is no history
    /// to flap from (a router starting during an outage must not wait `rise` checks to route,
    /// nor route to a region it has never seen answer).
    Unknown,
    /// Routed to.
    Healthy,
    /// Not routed to.
    Unhealthy,
}

impl State {
    /// The label of `ledger_router_health_transitions_total{to}`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// The thresholds, each at least 1 (checked by the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that take a healthy region out.
    pub fall: u32,
    /// Consecutive passes that take an unhealthy region back.
    pub rise: u32,
}

/// One region's state and the run of results that leads to its next change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tracker {
    /// The state.
    pub state: State,
    /// Passed checks in a row (zero after a failure).
    pub passes_in_a_row: u32,
    /// Failed checks in a row (zero after a pass).
    pub failures_in_a_row: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { state: State::Unknown, passes_in_a_row: 0, failures_in_a_row: 0 }
    }
}

impl Tracker {
    /// Records one check; returns the new state when this check changed it.
    pub fn observe(&mut self, passed: bool, t: Thresholds) -> Option<State> {
        // Saturating: a region healthy for years must not wrap its run into a fake failure run.
        if passed {
            self.passes_in_a_row = self.passes_in_a_row.saturating_add(1);
            self.failures_in_a_row = 0;
        } else {
            self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
            self.passes_in_a_row = 0;
        }
        let next = match self.state {
            State::Unknown if passed => State::Healthy,
            State::Unknown => State::Unhealthy,
            State::Healthy if self.failures_in_a_row >= t.fall => State::Unhealthy,
            State::Unhealthy if self.passes_in_a_row >= t.rise => State::Healthy,
            same => same,
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }

    /// Whether requests may go to the region.
    pub fn healthy(&self) -> bool {
        self.state == State::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULTS: Thresholds = Thresholds { fall: 2, rise: 3 };

    fn run(results: &[bool], t: Thresholds) -> (Tracker, Vec<(usize, State)>) {
        let mut tracker = Tracker::default();
        let mut changes = Vec::new();
        for (i, &r) in results.iter().enumerate() {
            if let Some(s) = tracker.observe(r, t) {
                changes.push((i, s));
            }
        }
        (tracker, changes)
    }

    #[test]
    fn the_first_check_decides_then_fall_and_rise_runs_are_needed() {
        let (_, changes) = run(&[true, false, true, false, false, true, true, false, true, true, true], DEFAULTS);
        assert_eq!(changes, [(0, State::Healthy), (4, State::Unhealthy), (10, State::Healthy)]);
        let (t, changes) = run(&[false], DEFAULTS);
        assert_eq!((t.state, changes), (State::Unhealthy, vec![(0, State::Unhealthy)]));
    }

    /// The no-flapping test's pattern at the defaults: one failure in three never takes it out.
    #[test]
    fn one_failure_in_three_never_takes_a_healthy_region_out() {
        let pattern: Vec<bool> = (0..300).map(|i| i % 3 != 2).collect();
        let (t, changes) = run(&pattern, DEFAULTS);
        assert_eq!(changes, [(0, State::Healthy)]);
        assert!(t.healthy());
    }

    #[test]
    fn runs_saturate_instead_of_wrapping() {
        let mut t = Tracker { state: State::Healthy, passes_in_a_row: u32::MAX, failures_in_a_row: 0 };
        assert_eq!(t.observe(true, DEFAULTS), None);
        assert_eq!(t.passes_in_a_row, u32::MAX);
    }

    fn thresholds() -> impl Strategy<Value = Thresholds> {
        (1u32..=6, 1u32..=6).prop_map(|(fall, rise)| Thresholds { fall, rise })
    }

    proptest! {
        /// Every change after the first check happens exactly when a run reaches its threshold:
        /// out at the `fall`-th failure in a row, back at the `rise`-th pass in a row, never
        /// otherwise. (A seed that fails is printed by proptest and kept in proptest-regressions.)
        #[test]
        fn state_changes_exactly_at_full_runs(t in thresholds(), results in proptest::collection::vec(any::<bool>(), 1..200)) {
            let mut tracker = Tracker::default();
            let mut run_len = 0u32;
            for (i, &r) in results.iter().enumerate() {
                run_len = if i > 0 && results[i - 1] == r { run_len + 1 } else { 1 };
                let before = tracker.state;
                let change = tracker.observe(r, t);
                let expected = match (before, r) {
                    (State::Unknown, true) => Some(State::Healthy),
                    (State::Unknown, false) => Some(State::Unhealthy),
                    (State::Healthy, false) if run_len == t.fall => Some(State::Unhealthy),
                    (State::Unhealthy, true) if run_len == t.rise => Some(State::Healthy),
                    _ => None,
                };
                prop_assert_eq!(change, expected, "check {} of {:?}", i, results);
            }
        }

        /// No flapping: after the first check, two changes are at least `min(fall, rise)` checks
        /// apart, and a healthy region whose failures never come `fall` in a row stays in.
        #[test]
        fn changes_are_spaced_and_short_failure_runs_change_nothing(t in thresholds(), results in proptest::collection::vec(any::<bool>(), 1..200)) {
            let (_, changes) = run(&results, t);
            for pair in changes.windows(2) {
                prop_assert!(pair[1].0 - pair[0].0 >= t.fall.min(t.rise) as usize, "{:?}", changes);
            }
            let longest_failure_run = results.split(|&r| r).map(<[bool]>::len).max().unwrap_or(0);
            if results[0] && longest_failure_run < t.fall as usize {
                prop_assert_eq!(changes, vec![(0, State::Healthy)]);
            }
        }
    }
}
