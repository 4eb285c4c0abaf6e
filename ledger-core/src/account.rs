//! Accounts: what a client opens (`AccountSpec`) and what the ledger keeps (`AccountState`).

use crate::currency::Currency;
use crate::ids::AccountId;
use crate::money::{BALANCE_MAX, MoneyError};
use crate::vv::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The attributes an account is opened with; immutable afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSpec {
    /// Client-chosen id.
    pub id: AccountId,
    /// The only currency the account holds.
    pub currency: Currency,
    /// Funding accounts (`world`, `cash`) may go below zero; customer accounts may not.
    pub allow_negative: bool,
    /// Free-form client data, stored and returned as given.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An account as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// Its attributes.
    pub spec: AccountSpec,
    /// Balance in minor units; negative only if `allow_negative`.
    pub balance: i64,
    /// Number of entries posted to it so far (the last entry's sequence number).
    pub entry_seq: i64,
    /// Which events, from which region, it reflects.
    pub version: VersionVector,
    /// Two regions opened it with different attributes: no new transfer may touch it until the
    /// conflict is resolved.
    pub frozen: bool,
    /// Reserved by pending transfers from it, neither posted nor voided yet: not available to spend.
    pub pending_debits: i64,
    /// Promised to it by pending transfers, neither posted nor voided yet: not yet in its balance.
    pub pending_credits: i64,
    /// Money held in currencies other than its own: what was posted under a definition in another
    /// currency that lost to the winning one. Kept apart, so a currency's total never changes.
    pub foreign: BTreeMap<Currency, i64>,
}

impl AccountState {
    /// A freshly opened account: zero balance, nothing posted.
    pub fn opened(spec: AccountSpec) -> Self {
        Self {
            spec,
            balance: 0,
            entry_seq: 0,
            version: VersionVector::new(),
            frozen: false,
            pending_debits: 0,
            pending_credits: 0,
            foreign: BTreeMap::new(),
        }
    }

    /// What may be spent: the balance less what pending transfers reserve. Never overflows: both
    /// stay within ±`BALANCE_MAX`.
    pub fn available(&self) -> i64 {
        self.balance - self.pending_debits
    }

    /// Adopts the definition finance chose when resolving an account-definition conflict
    /// (`currency`, `allow_negative`; the id and metadata stay). Money never changes currency: when
    /// the currency changes, the balance moves apart into `foreign[old currency]` (added to what is
    /// there) and the balance becomes what was kept apart in the chosen currency (0 if nothing).
    /// Every amount stays within ±[`BALANCE_MAX`]; a refusal changes nothing. The frozen flag is the
    /// caller's (other conflicts on the account may keep it frozen).
    pub fn adopt_definition(&mut self, currency: Currency, allow_negative: bool) -> Result<(), MoneyError> {
        if currency != self.spec.currency {
            let kept = self.foreign.get(&self.spec.currency).copied().unwrap_or(0);
            let kept = kept.checked_add(self.balance).filter(|b| (-BALANCE_MAX..=BALANCE_MAX).contains(b));
            let kept = kept.ok_or(MoneyError::Overflow)?;
            let balance = self.foreign.remove(&currency).unwrap_or(0);
            if kept != 0 {
                self.foreign.insert(self.spec.currency, kept);
            } else {
                self.foreign.remove(&self.spec.currency);
            }
            self.balance = balance;
            self.spec.currency = currency;
        }
        self.spec.allow_negative = allow_negative;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(currency: &str, balance: i64, foreign: &[(&str, i64)]) -> AccountState {
        let mut a = AccountState::opened(AccountSpec {
            id: AccountId::new("x").unwrap(),
            currency: Currency::new(currency).unwrap(),
            allow_negative: false,
            metadata: Default::default(),
        });
        a.balance = balance;
        a.foreign = foreign.iter().map(|(c, b)| (Currency::new(c).unwrap(), *b)).collect();
        a
    }

    /// Per currency: the balance if it is the account's, else what is kept apart in it.
    fn holdings(a: &AccountState) -> BTreeMap<Currency, i64> {
        let mut all = a.foreign.clone();
        *all.entry(a.spec.currency).or_insert(0) += a.balance;
        all.retain(|_, b| *b != 0);
        all
    }

    #[test]
    fn adopting_another_currency_moves_money_apart_and_never_changes_it() {
        let mut x = account("EUR", 40, &[("USD", 70)]);
        let before = holdings(&x);
        x.adopt_definition(Currency::new("USD").unwrap(), true).unwrap();
        assert_eq!((x.spec.currency.as_str(), x.spec.allow_negative, x.balance), ("USD", true, 70));
        assert_eq!(x.foreign, BTreeMap::from([(Currency::new("EUR").unwrap(), 40)]));
        assert_eq!(holdings(&x), before);
        // Nothing kept apart in the chosen currency: the balance starts at 0; what is kept apart adds up.
        let mut y = account("EUR", -5, &[("GBP", 3), ("EUR", 2)]);
        let before = holdings(&y);
        y.adopt_definition(Currency::new("USD").unwrap(), false).unwrap();
        assert_eq!(y.balance, 0);
        assert_eq!(y.foreign.get(&Currency::new("EUR").unwrap()), Some(&-3));
        assert_eq!(holdings(&y), before);
        // The same currency: only allow_negative changes.
        let mut z = account("USD", 9, &[]);
        z.adopt_definition(Currency::new("USD").unwrap(), true).unwrap();
        assert_eq!((z.balance, z.spec.allow_negative, z.foreign.is_empty()), (9, true, true));
    }

    #[test]
    fn a_sum_kept_apart_beyond_the_bound_is_refused_and_changes_nothing() {
        let mut x = account("EUR", BALANCE_MAX, &[("EUR", 1), ("USD", 3)]);
        let before = x.clone();
        assert_eq!(x.adopt_definition(Currency::new("USD").unwrap(), true), Err(MoneyError::Overflow));
        assert_eq!(x, before);
    }
}
