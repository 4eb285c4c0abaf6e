//! The double-entry rule: a transfer debits one account and credits another by the same amount, in
//! the same currency, and never takes an account that forbids it below zero. Both postings happen or
//! neither does, so the sum of all balances never changes. No balance leaves ±[`BALANCE_MAX`].

use crate::account::AccountState;
use crate::currency::Currency;
use crate::event::{LEGS_MAX, Leg};
use crate::ids::AccountId;
use crate::ids::RegionId;
use crate::money::{Amount, BALANCE_MAX, MoneyError, credit, debit};
use std::collections::BTreeMap;

/// Why a transfer cannot be posted. Nothing changes when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostingError {
    /// Source and destination are the same account.
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// The accounts' currencies differ, or differ from the one requested.
    #[error("currency mismatch: {from} from, {to} to, {requested} requested")]
    CurrencyMismatch {
        /// Source account's currency.
        from: Currency,
        /// Destination account's currency.
        to: Currency,
        /// The transfer's currency.
        requested: Currency,
    },
    /// The source forbids a negative balance and holds less than the amount.
    #[error("insufficient funds: balance {balance}, amount {amount}")]
    InsufficientFunds {
        /// The source's balance.
        balance: i64,
        /// The amount asked for.
        amount: i64,
    },
    /// The transfer would leave a balance outside ±[`BALANCE_MAX`].
    #[error("the balance of {account} would be {balance} {sign} {amount}, outside ±{BALANCE_MAX}", sign = if *credited { "+" } else { "-" })]
    BalanceOutOfRange {
        /// The account whose balance would leave the bounds.
        account: AccountId,
        /// Its balance.
        balance: i64,
        /// The amount.
        amount: i64,
        /// Whether the account is the credited one.
        credited: bool,
    },
    /// An account this region does not know.
    #[error("unknown account")]
    UnknownAccount,
    /// The account is frozen by an account-definition conflict until it is resolved.
    #[error("account {0} is frozen: two regions opened it with different attributes")]
    Frozen(crate::ids::AccountId),
    /// The transfer to settle is not pending here: unknown, not two-phase, or already settled
    /// (or expired, for a post).
    #[error("transfer {0} is not pending")]
    NotPending(uuid::Uuid),
    /// A post of more than the pending transfer reserved.
    #[error("a post of {amount} exceeds the {reserved} reserved")]
    PostExceedsReserved {
        /// What the pending transfer reserved.
        reserved: i64,
        /// What the post asked for.
        amount: i64,
    },
    /// A transaction with no legs or more than [`LEGS_MAX`].
    #[error("a transaction has 1 to {LEGS_MAX} legs, not {0}")]
    LegCount(usize),
    /// A counter would leave the 64-bit range (an entry sequence); balances are bounded first.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// Posts `amount` from `from` to `to` as an event originated in `origin`: balances move, each
/// account's entry sequence and `origin`'s counter in its version vector advance. Checks everything
/// first and changes nothing on error.
pub fn post_transfer(
    from: &mut AccountState,
    to: &mut AccountState,
    amount: Amount,
    currency: Option<Currency>,
    origin: &RegionId,
) -> Result<(), PostingError> {
    post_leg(from, to, amount, currency)?;
    from.version.increment(origin);
    to.version.increment(origin);
    Ok(())
}

/// What one leg of a transaction did: each side's entry number and balance after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegPosting {
    /// The debited account's entry number of this leg.
    pub from_seq: i64,
    /// Its balance after the leg.
    pub from_balance: i64,
    /// The credited account's entry number of this leg.
    pub to_seq: i64,
    /// Its balance after the leg.
    pub to_balance: i64,
}

/// Posts every leg of a transaction, in order, or none: each leg is judged by the transfer rules
/// (overdraft, currency, bounds, frozen) on the balances the legs before it left, so a later leg
/// may spend what an earlier one brought. `accounts` holds every touched account; on success each
/// touched account's `origin` counter advances once (one event), and one [`LegPosting`] per leg is
/// returned. On error, the index of the refused leg; nothing changes.
pub fn post_transaction(
    accounts: &mut BTreeMap<AccountId, AccountState>,
    legs: &[Leg],
    origin: &RegionId,
) -> Result<Vec<LegPosting>, (usize, PostingError)> {
    if legs.is_empty() || legs.len() > LEGS_MAX {
        return Err((legs.len().min(LEGS_MAX), PostingError::LegCount(legs.len())));
    }
    let mut work: BTreeMap<AccountId, AccountState> = BTreeMap::new();
    let mut out = Vec::with_capacity(legs.len());
    for (i, leg) in legs.iter().enumerate() {
        if leg.from == leg.to {
            return Err((i, PostingError::SameAccount));
        }
        for id in [&leg.from, &leg.to] {
            if !work.contains_key(id) {
                let state = accounts.get(id).ok_or((i, PostingError::UnknownAccount))?;
                work.insert(id.clone(), state.clone());
            }
        }
        let mut from = work.remove(&leg.from).expect("taken above");
        let to = work.get_mut(&leg.to).expect("taken above");
        let posted = post_leg(&mut from, to, leg.amount, Some(leg.currency));
        let to_after = (to.entry_seq, to.balance);
        work.insert(leg.from.clone(), from);
        posted.map_err(|e| (i, e))?;
        let from = &work[&leg.from];
        out.push(LegPosting {
            from_seq: from.entry_seq,
            from_balance: from.balance,
            to_seq: to_after.0,
            to_balance: to_after.1,
        });
    }
    for (id, mut state) in work {
        state.version.increment(origin);
        accounts.insert(id, state);
    }
    Ok(out)
}

/// Reserves `amount` for a pending transfer from `from` to `to`: judged like a transfer (the
/// source's *available* balance, currency, frozen accounts, bounds), it moves no balance; the
/// source's pending debits and the destination's pending credits grow and both vectors count
/// `origin`'s event. Changes nothing on error.
pub fn reserve(
    from: &mut AccountState,
    to: &mut AccountState,
    amount: Amount,
    currency: Option<Currency>,
    origin: &RegionId,
) -> Result<(), PostingError> {
    // Judged as the transfer it may become: a scratch posting checks every rule.
    let (mut a, mut b) = (from.clone(), to.clone());
    post_leg(&mut a, &mut b, amount, currency)?;
    let (debits, credits) =
        (from.pending_debits.checked_add(amount.minor_units()), to.pending_credits.checked_add(amount.minor_units()));
    let bounded = |v: Option<i64>| v.filter(|v| *v <= BALANCE_MAX);
    let (Some(debits), Some(credits)) = (bounded(debits), bounded(credits)) else {
        return Err(PostingError::BalanceOutOfRange {
            account: from.spec.id.clone(),
            balance: from.pending_debits,
            amount: amount.minor_units(),
            credited: false,
        });
    };
    from.pending_debits = debits;
    to.pending_credits = credits;
    from.version.increment(origin);
    to.version.increment(origin);
    Ok(())
}

/// Settles a pending transfer that reserved `reserved`: releases the reservation and, for a post,
/// moves `post` (at most `reserved`) by the transfer rules on what is then available. Both vectors
/// count `origin`'s event. Changes nothing on error.
pub fn settle(
    from: &mut AccountState,
    to: &mut AccountState,
    reserved: Amount,
    post: Option<Amount>,
    currency: Currency,
    origin: &RegionId,
) -> Result<(), PostingError> {
    let (mut a, mut b) = (from.clone(), to.clone());
    a.pending_debits -= reserved.minor_units();
    b.pending_credits -= reserved.minor_units();
    if let Some(amount) = post {
        if amount > reserved {
            return Err(PostingError::PostExceedsReserved {
                reserved: reserved.minor_units(),
                amount: amount.minor_units(),
            });
        }
        post_leg(&mut a, &mut b, amount, Some(currency))?;
    }
    a.version.increment(origin);
    b.version.increment(origin);
    *from = a;
    *to = b;
    Ok(())
}

/// One movement by the transfer rules: balances and entry sequences move, vectors do not (the
/// caller counts one event per account, however many legs touch it).
fn post_leg(
    from: &mut AccountState,
    to: &mut AccountState,
    amount: Amount,
    currency: Option<Currency>,
) -> Result<(), PostingError> {
    if from.spec.id == to.spec.id {
        return Err(PostingError::SameAccount);
    }
    if let Some(frozen) = [&*from, &*to].into_iter().find(|a| a.frozen) {
        return Err(PostingError::Frozen(frozen.spec.id.clone()));
    }
    let requested = currency.unwrap_or(from.spec.currency);
    if from.spec.currency != requested || to.spec.currency != requested {
        return Err(PostingError::CurrencyMismatch { from: from.spec.currency, to: to.spec.currency, requested });
    }
    let from_balance = debit(from.balance, amount)?;
    // Money pending transfers reserve is not there to spend.
    if from_balance - from.pending_debits < 0 && !from.spec.allow_negative {
        return Err(PostingError::InsufficientFunds { balance: from.available(), amount: amount.minor_units() });
    }
    let to_balance = credit(to.balance, amount)?;
    for (account, after, credited) in [(&*from, from_balance, false), (&*to, to_balance, true)] {
        if !(-BALANCE_MAX..=BALANCE_MAX).contains(&after) {
            return Err(PostingError::BalanceOutOfRange {
                account: account.spec.id.clone(),
                balance: account.balance,
                amount: amount.minor_units(),
                credited,
            });
        }
    }
    let (from_seq, to_seq) = (from.entry_seq.checked_add(1), to.entry_seq.checked_add(1));
    let (Some(from_seq), Some(to_seq)) = (from_seq, to_seq) else {
        return Err(PostingError::Money(MoneyError::Overflow));
    };
    from.balance = from_balance;
    to.balance = to_balance;
    from.entry_seq = from_seq;
    to.entry_seq = to_seq;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountSpec;
    use crate::money::AMOUNT_MAX;
    use proptest::prelude::*;

    fn account(id: &str, allow_negative: bool) -> AccountState {
        AccountState::opened(AccountSpec {
            id: AccountId::new(id).unwrap(),
            currency: Currency::new("USD").unwrap(),
            allow_negative,
            metadata: Default::default(),
        })
    }

    /// acc0–acc3 hold USD, acc4–acc7 EUR (as the transaction property test opens them).
    fn currency_of(id: &AccountId) -> Currency {
        let n: usize = id.as_str().trim_start_matches("acc").parse().unwrap();
        Currency::new(if n < 4 { "USD" } else { "EUR" }).unwrap()
    }

    fn us() -> RegionId {
        RegionId::new("us-east").unwrap()
    }

    #[test]
    fn an_overdraft_changes_nothing() {
        let (mut a, mut b) = (account("a", false), account("b", false));
        let before = (a.clone(), b.clone());
        let err = post_transfer(&mut a, &mut b, Amount::new(1).unwrap(), None, &us()).unwrap_err();
        assert_eq!(err, PostingError::InsufficientFunds { balance: 0, amount: 1 });
        assert_eq!((a, b), before);
    }

    #[test]
    fn currency_mismatch_is_refused() {
        let (mut world, mut b) = (account("world", true), account("b", false));
        b.spec.currency = Currency::new("EUR").unwrap();
        let err = post_transfer(&mut world, &mut b, Amount::new(1).unwrap(), None, &us()).unwrap_err();
        assert!(matches!(err, PostingError::CurrencyMismatch { .. }));
        let mut c = account("c", false);
        let err =
            post_transfer(&mut world, &mut c, Amount::new(1).unwrap(), Some(Currency::new("EUR").unwrap()), &us())
                .unwrap_err();
        assert!(matches!(err, PostingError::CurrencyMismatch { .. }));
    }

    #[test]
    fn balance_overflow_is_refused() {
        let (mut world, mut b) = (account("world", true), account("b", false));
        b.balance = i64::MAX;
        let err = post_transfer(&mut world, &mut b, Amount::new(1).unwrap(), None, &us()).unwrap_err();
        assert_eq!(err, PostingError::Money(MoneyError::Overflow));
        assert_eq!(world.balance, 0);
    }

    #[test]
    fn a_balance_never_leaves_its_bounds_and_a_refusal_changes_nothing() {
        let (mut world, mut b) = (account("world", true), account("b", false));
        b.balance = BALANCE_MAX - 1;
        post_transfer(&mut world, &mut b, Amount::new(1).unwrap(), None, &us()).unwrap();
        assert_eq!(b.balance, BALANCE_MAX, "the bound itself is reachable");
        let before = (world.clone(), b.clone());
        let err = post_transfer(&mut world, &mut b, Amount::new(1).unwrap(), None, &us()).unwrap_err();
        assert!(matches!(err, PostingError::BalanceOutOfRange { credited: true, .. }), "{err}");
        assert_eq!((world.clone(), b.clone()), before);
        world.balance = -BALANCE_MAX;
        let mut c = account("c", false);
        let err = post_transfer(&mut world, &mut c, Amount::new(1).unwrap(), None, &us()).unwrap_err();
        assert!(matches!(err, PostingError::BalanceOutOfRange { credited: false, .. }), "{err}");
        assert_eq!((world.balance, c.balance), (-BALANCE_MAX, 0));
    }

    /// A balance within bounds, often at or near an edge.
    fn balance() -> impl Strategy<Value = i64> {
        prop_oneof![
            -BALANCE_MAX..=BALANCE_MAX,
            (0..=AMOUNT_MAX).prop_map(|d| BALANCE_MAX - d),
            (0..=AMOUNT_MAX).prop_map(|d| d - BALANCE_MAX),
            Just(0i64),
        ]
    }

    /// An amount up to the largest transfer, often at or near it.
    fn amount() -> impl Strategy<Value = i64> {
        prop_oneof![1..=AMOUNT_MAX, (0..1_000i64).prop_map(|d| AMOUNT_MAX - d), 1..1_000i64]
    }

    proptest! {
        /// Any amount up to `AMOUNT_MAX` between any balances within bounds: posting never panics,
        /// never leaves a balance outside ±`BALANCE_MAX`, moves exactly the amount when it
        /// succeeds and changes nothing when it refuses.
        #[test]
        fn posting_keeps_every_balance_within_bounds(
            from_balance in balance(), to_balance in balance(), amount in amount(), allow_negative: bool,
        ) {
            let (mut a, mut b) = (account("a", allow_negative), account("b", false));
            a.balance = from_balance;
            b.balance = to_balance;
            let before = (a.clone(), b.clone());
            match post_transfer(&mut a, &mut b, Amount::new(amount).unwrap(), None, &us()) {
                Ok(()) => {
                    prop_assert_eq!((a.balance, b.balance), (from_balance - amount, to_balance + amount));
                }
                Err(PostingError::InsufficientFunds { .. }) => {
                    prop_assert!(!allow_negative && from_balance - amount < 0);
                    prop_assert_eq!((&a, &b), (&before.0, &before.1));
                }
                Err(PostingError::BalanceOutOfRange { .. }) => {
                    prop_assert!(from_balance - amount < -BALANCE_MAX || to_balance + amount > BALANCE_MAX);
                    prop_assert_eq!((&a, &b), (&before.0, &before.1));
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
            for balance in [a.balance, b.balance] {
                prop_assert!((-BALANCE_MAX..=BALANCE_MAX).contains(&balance));
            }
        }

        /// Random transactions of up to `LEGS_MAX` legs in two currencies, amounts up to the bound:
        /// a transaction is applied whole or not at all; when applied, each leg's entry numbers and
        /// balances are those of posting the legs one by one, money is conserved per currency, no
        /// account that forbids it goes below zero, and each touched account's vector advances once.
        #[test]
        fn transactions_apply_whole_or_not_at_all_and_conserve_money_per_currency(
            txs in proptest::collection::vec(
                proptest::collection::vec((0usize..8, 0usize..8, prop_oneof![3 => 1..500i64, 1 => amount()]), 0..=LEGS_MAX + 1),
                1..60,
            )
        ) {
            let currency = |i: usize| Currency::new(if i < 4 { "USD" } else { "EUR" }).unwrap();
            let mut accounts: BTreeMap<AccountId, AccountState> = (0..8)
                .map(|i| {
                    let mut a = account(&format!("acc{i}"), i % 4 == 0);
                    a.spec.currency = currency(i);
                    (a.spec.id.clone(), a)
                })
                .collect();
            let id = |i: usize| AccountId::new(format!("acc{i}")).unwrap();
            for legs in txs {
                let legs: Vec<Leg> = legs
                    .into_iter()
                    .map(|(f, t, amount)| Leg { from: id(f), to: id(t), amount: Amount::new(amount).unwrap(), currency: currency(f) })
                    .collect();
                let before = accounts.clone();
                match post_transaction(&mut accounts, &legs, &us()) {
                    Ok(posted) => {
                        prop_assert!(!legs.is_empty() && legs.len() <= LEGS_MAX);
                        prop_assert_eq!(posted.len(), legs.len());
                        // The same legs one by one, on copies.
                        let mut replay = before.clone();
                        for (leg, p) in legs.iter().zip(&posted) {
                            let mut from = replay[&leg.from].clone();
                            let mut to = replay[&leg.to].clone();
                            post_transfer(&mut from, &mut to, leg.amount, Some(leg.currency), &us()).unwrap();
                            prop_assert_eq!((p.from_seq, p.from_balance, p.to_seq, p.to_balance), (from.entry_seq, from.balance, to.entry_seq, to.balance));
                            replay.insert(leg.from.clone(), from);
                            replay.insert(leg.to.clone(), to);
                        }
                        for (k, a) in &accounts {
                            prop_assert_eq!((a.balance, a.entry_seq), (replay[k].balance, replay[k].entry_seq));
                            let touched = legs.iter().any(|l| l.from == *k || l.to == *k);
                            prop_assert_eq!(a.version.get(&us()), before[k].version.get(&us()) + u64::from(touched));
                        }
                    }
                    Err((i, e)) => {
                        prop_assert_eq!(&accounts, &before, "a refused transaction changes nothing");
                        match e {
                            PostingError::LegCount(n) => prop_assert!(n == 0 || n > LEGS_MAX),
                            PostingError::SameAccount => prop_assert!(legs[i].from == legs[i].to),
                            PostingError::CurrencyMismatch { .. } => prop_assert!(currency_of(&legs[i].to) != legs[i].currency),
                            PostingError::InsufficientFunds { .. } | PostingError::BalanceOutOfRange { .. } => {}
                            other => prop_assert!(false, "unexpected {other}"),
                        }
                    }
                }
                for c in ["USD", "EUR"] {
                    let total: i64 = accounts.values().filter(|a| a.spec.currency.as_str() == c).map(|a| a.balance).sum();
                    prop_assert_eq!(total, 0, "{} is conserved", c);
                }
                prop_assert!(accounts.values().all(|a| a.spec.allow_negative || a.balance >= 0));
            }
        }

        /// Random reservations, posts (up to what was reserved), voids and transfers: available
        /// never goes below zero on an account that forbids it, money is conserved, pending
        /// amounts are exactly what the unsettled reservations hold, and a refusal changes nothing.
        #[test]
        fn two_phase_transfers_never_overdraw_and_conserve_money(
            ops in proptest::collection::vec((0u8..4, 0usize..4, 0usize..4, prop_oneof![3 => 1..500i64, 1 => amount()], any::<usize>()), 1..200)
        ) {
            let mut accounts: Vec<AccountState> = (0..4).map(|i| account(&format!("acc{i}"), i == 0)).collect();
            let mut open: Vec<(usize, usize, i64)> = Vec::new();
            for (kind, from, to, amount, pick) in ops {
                let before = accounts.clone();
                let (lo, hi) = (from.min(to), from.max(to));
                let result = match kind {
                    0 | 1 if from != to => {
                        let (left, right) = accounts.split_at_mut(hi);
                        let (a, b) = (&mut left[lo], &mut right[0]);
                        let (src, dst) = if from < to { (a, b) } else { (b, a) };
                        let amount = Amount::new(amount).unwrap();
                        if kind == 0 {
                            post_transfer(src, dst, amount, None, &us())
                        } else {
                            let r = reserve(src, dst, amount, None, &us());
                            if r.is_ok() {
                                open.push((from, to, amount.minor_units()));
                            }
                            r
                        }
                    }
                    2 | 3 if !open.is_empty() => {
                        let (f, t, reserved) = open[pick % open.len()];
                        let (lo, hi) = (f.min(t), f.max(t));
                        let (left, right) = accounts.split_at_mut(hi);
                        let (a, b) = (&mut left[lo], &mut right[0]);
                        let (src, dst) = if f < t { (a, b) } else { (b, a) };
                        let post = (kind == 2).then(|| Amount::new(amount.min(reserved)).unwrap());
                        let r = settle(src, dst, Amount::new(reserved).unwrap(), post, src.spec.currency, &us());
                        if r.is_ok() {
                            open.remove(pick % open.len());
                        }
                        r
                    }
                    _ => Ok(()),
                };
                if result.is_err() {
                    prop_assert_eq!(&accounts, &before, "a refusal changes nothing");
                }
                prop_assert_eq!(accounts.iter().map(|a| a.balance).sum::<i64>(), 0);
                for (i, a) in accounts.iter().enumerate() {
                    prop_assert!(a.spec.allow_negative || a.available() >= 0, "{:?}", a);
                    prop_assert_eq!(a.pending_debits, open.iter().filter(|p| p.0 == i).map(|p| p.2).sum::<i64>());
                    prop_assert_eq!(a.pending_credits, open.iter().filter(|p| p.1 == i).map(|p| p.2).sum::<i64>());
                }
            }
        }

        /// Random transfer sequences among funding and customer accounts: the sum of all balances
        /// stays zero, no customer account ever goes below zero, and an accepted transfer moves
        /// exactly its amount.
        #[test]
        fn random_transfers_conserve_money_and_never_overdraw(
            ops in proptest::collection::vec((0usize..6, 0usize..6, 1i64..1_000), 1..300)
        ) {
            let mut accounts: Vec<AccountState> = (0..6).map(|i| account(&format!("acc{i}"), i < 2)).collect();
            for (from, to, amount) in ops {
                if from == to {
                    continue;
                }
                let (lo, hi) = (from.min(to), from.max(to));
                let (left, right) = accounts.split_at_mut(hi);
                let (a, b) = (&mut left[lo], &mut right[0]);
                let (src, dst) = if from < to { (a, b) } else { (b, a) };
                let before = (src.balance, dst.balance);
                match post_transfer(src, dst, Amount::new(amount).unwrap(), None, &us()) {
                    Ok(()) => {
                        prop_assert_eq!(src.balance, before.0 - amount);
                        prop_assert_eq!(dst.balance, before.1 + amount);
                    }
                    Err(PostingError::InsufficientFunds { .. }) => {
                        prop_assert!(!src.spec.allow_negative);
                        prop_assert!(before.0 < amount);
                        prop_assert_eq!((src.balance, dst.balance), before);
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
                prop_assert_eq!(accounts.iter().map(|a| a.balance).sum::<i64>(), 0);
                prop_assert!(accounts.iter().all(|a| a.spec.allow_negative || a.balance >= 0));
            }
        }
    }
}
