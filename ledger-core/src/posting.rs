//! The double-entry rule: a transfer debits one account and credits another by the same amount, in
//! the same currency, and never takes an account that forbids it below zero. Both postings happen or
//! neither does, so the sum of all balances never changes. No balance leaves ±[`BALANCE_MAX`].

use crate::account::AccountState;
use crate::currency::Currency;
use crate::ids::AccountId;
use crate::ids::RegionId;
use crate::money::{Amount, BALANCE_MAX, MoneyError, credit, debit};

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
    if from_balance < 0 && !from.spec.allow_negative {
        return Err(PostingError::InsufficientFunds { balance: from.balance, amount: amount.minor_units() });
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
    from.version.increment(origin);
    to.version.increment(origin);
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
