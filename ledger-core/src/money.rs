//! Money amounts: integers in minor units (cents for USD), never floats, with every operation
//! checked so an overflow is an error instead of a silent wrap.
//!
//! Bounds: a transfer moves at most [`AMOUNT_MAX`] and every balance stays within
//! ±[`BALANCE_MAX`]. Since `BALANCE_MAX + AMOUNT_MAX` is far below `i64::MAX`, one posting on a
//! balance within bounds can never overflow 64 bits, and the sum of a region's balances, of
//! entries, or of the postings over a causal past stays far from the edge of `bigint` too.

use serde::{Deserialize, Serialize};

/// The largest amount one transfer may move, in minor units: 10^15 (ten trillion dollars in
/// cents), beyond any real payment, and small enough that thousands of them added to a balance
/// within bounds still fit in 64 bits.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;

/// The largest magnitude a balance may reach, in minor units: 2^62, half of `i64`'s range, so a
/// balance plus or minus any amount up to [`AMOUNT_MAX`] is computed without overflow and then
/// checked against the bound.
pub const BALANCE_MAX: i64 = 1 << 62;

/// Why an amount could not be built or combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// A transfer amount must be strictly positive; zero and negative amounts move nothing.
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    /// A transfer amount above [`AMOUNT_MAX`].
    #[error("amount {0} exceeds the largest transfer, {AMOUNT_MAX}")]
    TooLarge(i64),
    /// The result does not fit in 64 bits of minor units.
    #[error("amount arithmetic overflowed")]
    Overflow,
}

/// A strictly positive amount in minor units, at most [`AMOUNT_MAX`], as carried by one transfer.
///
/// Stored as `i64` because PostgreSQL's `bigint` is signed and balances may go negative on
/// accounts that allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    /// Builds an amount, refusing zero, negative values and values above [`AMOUNT_MAX`].
    pub fn new(minor_units: i64) -> Result<Self, MoneyError> {
        if minor_units <= 0 {
            return Err(MoneyError::NotPositive(minor_units));
        }
        if minor_units > AMOUNT_MAX {
            return Err(MoneyError::TooLarge(minor_units));
        }
        Ok(Self(minor_units))
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Amount {
    type Error = MoneyError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Amount> for i64 {
    fn from(value: Amount) -> Self {
        value.0
    }
}

/// `balance + amount`, or an error when it does not fit.
pub fn credit(balance: i64, amount: Amount) -> Result<i64, MoneyError> {
    balance.checked_add(amount.0).ok_or(MoneyError::Overflow)
}

/// `balance - amount`, or an error when it does not fit.
pub fn debit(balance: i64, amount: Amount) -> Result<i64, MoneyError> {
    balance.checked_sub(amount.0).ok_or(MoneyError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_and_negative_amounts_are_refused() {
        assert_eq!(Amount::new(0), Err(MoneyError::NotPositive(0)));
        assert_eq!(Amount::new(-5), Err(MoneyError::NotPositive(-5)));
        assert!(serde_json::from_str::<Amount>("0").is_err());
        assert!(serde_json::from_str::<Amount>("1.5").is_err());
    }

    #[test]
    fn amounts_above_the_largest_transfer_are_refused() {
        assert_eq!(Amount::new(AMOUNT_MAX).map(Amount::minor_units), Ok(AMOUNT_MAX));
        assert_eq!(Amount::new(AMOUNT_MAX + 1), Err(MoneyError::TooLarge(AMOUNT_MAX + 1)));
        assert!(serde_json::from_str::<Amount>(&(AMOUNT_MAX + 1).to_string()).is_err());
        // One posting on a balance within bounds cannot overflow.
        assert!(BALANCE_MAX.checked_add(AMOUNT_MAX).is_some() && (-BALANCE_MAX).checked_sub(AMOUNT_MAX).is_some());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let one = Amount::new(1).unwrap();
        assert_eq!(credit(i64::MAX, one), Err(MoneyError::Overflow));
        assert_eq!(debit(i64::MIN, one), Err(MoneyError::Overflow));
    }

    proptest! {
        #[test]
        fn debit_then_credit_restores_the_balance(balance in -1_000_000_000i64..1_000_000_000, amount in 1i64..1_000_000_000) {
            let amount = Amount::new(amount).unwrap();
            let after = debit(balance, amount).unwrap();
            prop_assert_eq!(credit(after, amount).unwrap(), balance);
        }
    }
}
