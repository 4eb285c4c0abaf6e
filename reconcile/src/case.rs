//! The life of a case and the rules of who may move it, with no I/O: the store calls these
//! functions inside its transactions, and the property tests below check them over every sequence.
//!
//! ```text
//! open ──propose──▶ proposed ──approve (enough approvers)──▶ approved ──start──▶ executing ──finish──▶ resolved
//!   ▲                  │                                                            │
//!   └────reject────────┘◀───────────────────────fail (a region refused)─────────────┘
//! ```
//! `closed` (the written policy for concurrent-benign records) and `superseded` (an episode merged
//! into another one) are reached from intake, never by staff.

use serde::{Deserialize, Serialize};

/// Where a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseState {
    /// Waiting for a proposal.
    Open,
    /// A proposal waits for approval.
    Proposed,
    /// Approved; the executor has not started.
    Approved,
    /// The executor posts and confirms in every region.
    Executing,
    /// Compensating entries visible and the conflict resolved in every region.
    Resolved,
    /// Closed by policy without a posting.
    Closed,
    /// Merged into another case.
    Superseded,
}

impl CaseState {
    /// Every state, for filters and tests.
    pub const ALL: [CaseState; 7] = [
        CaseState::Open,
        CaseState::Proposed,
        CaseState::Approved,
        CaseState::Executing,
        CaseState::Resolved,
        CaseState::Closed,
        CaseState::Superseded,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Open => "open",
            CaseState::Proposed => "proposed",
            CaseState::Approved => "approved",
            CaseState::Executing => "executing",
            CaseState::Resolved => "resolved",
            CaseState::Closed => "closed",
            CaseState::Superseded => "superseded",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A staff role, in increasing power for reading; deciding and proposing are separate powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads cases and the trail.
    Viewer,
    /// Also proposes resolutions.
    Resolver,
    /// Also approves or rejects other people's proposals.
    Approver,
    /// Everything, and manages staff; still bound by maker-checker.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Resolver, Role::Approver, Role::Admin];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Resolver => "resolver",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role may do `action`.
    pub fn may(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Propose => matches!(self, Role::Resolver | Role::Admin),
            Action::Decide => matches!(self, Role::Approver | Role::Admin),
            Action::ManageStaff => self == Role::Admin,
        }
    }
}

/// What a person asks to do, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See cases, proposals and the trail.
    Read,
    /// Propose a resolution.
    Propose,
    /// Approve or reject a proposal.
    Decide,
    /// Add staff and tokens.
    ManageStaff,
}

/// Why a move is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The case is not in a state that allows it.
    #[error("the case is {0}, which does not allow this")]
    State(&'static str),
    /// The proposer may not decide on their own proposal.
    #[error("whoever proposed a resolution cannot approve or reject it")]
    MakerChecker,
    /// One person counts once.
    #[error("{0} already approved this proposal; it needs a different approver")]
    AlreadyApproved(String),
}

/// The outcome of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Enough approvers: the case moves to `approved`.
    Complete(Vec<String>),
    /// More approvers are needed: the proposal keeps the approvals so far.
    Partial(Vec<String>),
}

/// How many approvers a proposal moving `amount` needs.
pub fn approvals_needed(amount: i64, threshold: i64) -> i32 {
    if amount > threshold { 2 } else { 1 }
}

/// A proposal on a case in `state`.
pub fn propose(state: CaseState) -> Result<CaseState, Refusal> {
    match state {
        CaseState::Open => Ok(CaseState::Proposed),
        other => Err(Refusal::State(other.as_str())),
    }
}

/// `approver` approves a proposal by `proposer` on a case in `state`, already approved by
/// `approved_by`, needing `needed` distinct approvers.
pub fn approve(
    state: CaseState,
    proposer: &str,
    approved_by: &[String],
    approver: &str,
    needed: i32,
) -> Result<(CaseState, Approval), Refusal> {
    if state != CaseState::Proposed {
        return Err(Refusal::State(state.as_str()));
    }
    if approver == proposer {
        return Err(Refusal::MakerChecker);
    }
    if approved_by.iter().any(|a| a == approver) {
        return Err(Refusal::AlreadyApproved(approver.to_owned()));
    }
    let mut all = approved_by.to_vec();
    all.push(approver.to_owned());
    if all.len() as i32 >= needed {
        Ok((CaseState::Approved, Approval::Complete(all)))
    } else {
        Ok((CaseState::Proposed, Approval::Partial(all)))
    }
}

/// `who` rejects the proposal of `proposer` on a case in `state`: back to open.
pub fn reject(state: CaseState, proposer: &str, who: &str) -> Result<CaseState, Refusal> {
    if state != CaseState::Proposed {
        return Err(Refusal::State(state.as_str()));
    }
    if who == proposer {
        return Err(Refusal::MakerChecker);
    }
    Ok(CaseState::Open)
}

/// The executor takes an approved case.
pub fn start(state: CaseState) -> Result<CaseState, Refusal> {
    match state {
        CaseState::Approved | CaseState::Executing => Ok(CaseState::Executing),
        other => Err(Refusal::State(other.as_str())),
    }
}

/// The executor finished: every region shows the entries and the conflict resolved.
pub fn finish(state: CaseState) -> Result<CaseState, Refusal> {
    match state {
        CaseState::Executing => Ok(CaseState::Resolved),
        other => Err(Refusal::State(other.as_str())),
    }
}

/// A region refused the posting for good (for example insufficient funds): back to open, with the
/// region's answer kept on the proposal.
pub fn fail(state: CaseState) -> Result<CaseState, Refusal> {
    match state {
        CaseState::Executing | CaseState::Approved => Ok(CaseState::Open),
        other => Err(Refusal::State(other.as_str())),
    }
}

/// Intake saw the conflict again with different content (`benign`: its kind now). A case closed by
/// the benign policy reopens when its episode turns out to overdraw; a resolved case whose episode
/// grew reopens (the new events were never looked at); an open case whose episode turned benign is
/// closed by the policy. A case someone is acting on keeps its state.
pub fn reported_again(state: CaseState, benign: bool) -> CaseState {
    match (state, benign) {
        (CaseState::Closed, false) | (CaseState::Resolved, false) => CaseState::Open,
        (CaseState::Open, true) | (CaseState::Resolved, true) => CaseState::Closed,
        (s, _) => s,
    }
}

/// Intake learned the conflict was merged into another one: a case no one is acting on is
/// superseded; one whose resolution is approved or running is finished first.
pub fn superseded(state: CaseState) -> CaseState {
    match state {
        CaseState::Open | CaseState::Proposed | CaseState::Closed => CaseState::Superseded,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Propose(u8),
        Approve(u8),
        Reject(u8),
        Start,
        Finish,
        Fail,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4).prop_map(Step::Propose),
            (0u8..4).prop_map(Step::Approve),
            (0u8..4).prop_map(Step::Reject),
            Just(Step::Start),
            Just(Step::Finish),
            Just(Step::Fail),
        ]
    }

    proptest! {
        /// Whatever staff and the executor do, in any order: a case reaches `resolved` only through
        /// an approval by enough people other than the proposer, and every refused move changes
        /// nothing.
        #[test]
        fn no_resolution_without_four_eyes(steps in proptest::collection::vec(step(), 0..40), big in any::<bool>()) {
            let mut state = CaseState::Open;
            let mut proposer: Option<String> = None;
            let mut approved: Vec<String> = Vec::new();
            let needed = approvals_needed(if big { 2_000 } else { 10 }, 1_000);
            let mut approved_sets: Vec<Vec<String>> = Vec::new();
            for s in steps {
                let before = state;
                let next = match &s {
                    Step::Propose(p) => propose(state).inspect(|_| { proposer = Some(format!("u{p}")); approved.clear(); }),
                    Step::Approve(a) => match approve(state, proposer.as_deref().unwrap_or(""), &approved, &format!("u{a}"), needed) {
                        Ok((n, Approval::Complete(all))) => { approved_sets.push(all.clone()); approved = all; Ok(n) }
                        Ok((n, Approval::Partial(all))) => { approved = all; Ok(n) }
                        Err(e) => Err(e),
                    },
                    Step::Reject(r) => reject(state, proposer.as_deref().unwrap_or(""), &format!("u{r}")),
                    Step::Start => start(state),
                    Step::Finish => finish(state),
                    Step::Fail => fail(state),
                };
                match next {
                    Ok(n) => state = n,
                    Err(_) => prop_assert_eq!(state, before),
                }
                if state == CaseState::Resolved {
                    let last = approved_sets.last().expect("resolved only after an approval");
                    prop_assert!(last.len() as i32 >= needed);
                    prop_assert!(!last.iter().any(|a| Some(a) == proposer.as_ref()));
                    let distinct: std::collections::BTreeSet<&String> = last.iter().collect();
                    prop_assert_eq!(distinct.len(), last.len());
                    break;
                }
            }
        }
    }

    #[test]
    fn above_the_threshold_two_different_approvers_are_needed() {
        let needed = approvals_needed(1_001, 1_000);
        assert_eq!(needed, 2);
        assert_eq!(approvals_needed(1_000, 1_000), 1, "the threshold itself needs one");
        let (s, a) = approve(CaseState::Proposed, "maker", &[], "checker", needed).unwrap();
        assert_eq!((s, a.clone()), (CaseState::Proposed, Approval::Partial(vec!["checker".into()])));
        let Approval::Partial(so_far) = a else { unreachable!() };
        assert_eq!(
            approve(CaseState::Proposed, "maker", &so_far, "checker", needed),
            Err(Refusal::AlreadyApproved("checker".into()))
        );
        assert_eq!(approve(CaseState::Proposed, "maker", &so_far, "maker", needed), Err(Refusal::MakerChecker));
        assert!(matches!(
            approve(CaseState::Proposed, "maker", &so_far, "second", needed),
            Ok((CaseState::Approved, _))
        ));
    }

    #[test]
    fn roles_allow_only_their_powers() {
        assert!(!Role::Viewer.may(Action::Propose) && !Role::Viewer.may(Action::Decide));
        assert!(Role::Resolver.may(Action::Propose) && !Role::Resolver.may(Action::Decide));
        assert!(!Role::Approver.may(Action::Propose) && Role::Approver.may(Action::Decide));
        assert!(Role::Admin.may(Action::ManageStaff) && !Role::Approver.may(Action::ManageStaff));
    }
}
