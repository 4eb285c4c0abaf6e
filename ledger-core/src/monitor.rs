//! Balance monitors: the condition a client watches on an account (`available < 1000`), parsed
//! from a small typed grammar, and the edge rule that decides when a posting fires it.
//!
//! A monitor fires on an *edge*: the condition is false on the balance before a posting and true
//! after it. A balance that stays below a threshold over many postings fires once, when it
//! crossed; it fires again only after it went back above and crossed again. The node evaluates the
//! same rule in SQL, in the transaction that commits the posting (`monitor_holds` in migration
//! 0013); `region-node/tests/webhooks.rs` checks the two agree.
//!
//! Grammar (whitespace between the three parts optional):
//! ```text
//! condition := field op integer
//! field     := "balance" | "available"
//! op        := "<" | "<=" | ">" | ">="
//! integer   := ["-" | "+"] digit+      (minor units, within ±BALANCE_MAX)
//! ```

use crate::money::BALANCE_MAX;
use std::fmt;

/// Longest condition text accepted: the longest valid one (`available >= -4611686018427387904`)
/// with room for spacing; anything longer is refused before it is parsed.
pub const CONDITION_LEN_MAX: usize = 64;

/// Why a condition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// Longer than [`CONDITION_LEN_MAX`].
    #[error("a condition is at most {CONDITION_LEN_MAX} characters")]
    TooLong,
    /// The field is neither `balance` nor `available`.
    #[error("unknown field {0:?}: use balance or available")]
    UnknownField(String),
    /// No comparison operator after the field.
    #[error("expected one of <, <=, >, >= after the field")]
    MissingOperator,
    /// The threshold is not an integer of minor units.
    #[error("the threshold {0:?} is not an integer of minor units")]
    BadThreshold(String),
    /// The threshold is outside ±`BALANCE_MAX`: no balance could ever cross it.
    #[error("the threshold must be within ±{BALANCE_MAX}")]
    ThresholdOutOfRange,
}

/// What the condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The account's balance.
    Balance,
    /// What the account can spend. Today this is the balance; with pending (two-phase) amounts it
    /// becomes balance minus what is held: change [`Field::value`] and the SQL of migration 0013
    /// (the `available` expression next to `monitor_holds`'s callers), nothing else.
    Available,
}

/// The comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A parsed condition: `field op threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Condition {
    /// What is compared.
    pub field: Field,
    /// How.
    pub op: Op,
    /// Minor units, within ±`BALANCE_MAX`.
    pub threshold: i64,
}

impl Field {
    /// Its name in the grammar and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Balance => "balance",
            Field::Available => "available",
        }
    }

    /// The value compared, from the account's balance. The one place `available` is defined.
    pub fn value(self, balance: i64, pending_debits: i64) -> i64 {
        match self {
            Field::Balance => balance,
            // Both within ±2^62: never overflows.
            Field::Available => balance - pending_debits,
        }
    }
}

impl Op {
    /// Its symbol in the grammar and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

impl Condition {
    /// Parses `field op integer`; see the module documentation.
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        if text.len() > CONDITION_LEN_MAX {
            return Err(ConditionError::TooLong);
        }
        let text = text.trim();
        let name_len = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
        let field = match &text[..name_len] {
            "balance" => Field::Balance,
            "available" => Field::Available,
            other => return Err(ConditionError::UnknownField(other.to_owned())),
        };
        let rest = text[name_len..].trim_start();
        // Two-character operators first, so `<=` is not read as `<` followed by `=5`.
        let (op, rest) = [("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)]
            .iter()
            .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|r| (*op, r)))
            .ok_or(ConditionError::MissingOperator)?;
        let number = rest.trim_start();
        let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConditionError::BadThreshold(number.to_owned()));
        }
        // Digits only: a parse failure is an overflow of i64, out of range either way.
        let threshold: i64 = number.parse().map_err(|_| ConditionError::ThresholdOutOfRange)?;
        if !(-BALANCE_MAX..=BALANCE_MAX).contains(&threshold) {
            return Err(ConditionError::ThresholdOutOfRange);
        }
        Ok(Self { field, op, threshold })
    }

    /// Whether the condition holds for an account with this balance and these pending debits.
    pub fn holds(&self, balance: i64, pending_debits: i64) -> bool {
        let value = self.field.value(balance, pending_debits);
        match self.op {
            Op::Lt => value < self.threshold,
            Op::Le => value <= self.threshold,
            Op::Gt => value > self.threshold,
            Op::Ge => value >= self.threshold,
        }
    }

    /// Whether an event taking the account from `before` to `after` (balance, pending debits)
    /// makes the condition true: it was false before and is true after.
    pub fn fires(&self, before: (i64, i64), after: (i64, i64)) -> bool {
        !self.holds(before.0, before.1) && self.holds(after.0, after.1)
    }

    /// The indices of the postings (signed amounts applied in order from `start`) that fire the
    /// condition. `None` if a balance would leave i64 (the ledger's bounds keep it far inside).
    pub fn firings(&self, start: i64, postings: &[i64]) -> Option<Vec<usize>> {
        let mut balance = start;
        let mut fired = Vec::new();
        for (i, amount) in postings.iter().enumerate() {
            let after = balance.checked_add(*amount)?;
            if self.fires((balance, 0), (after, 0)) {
                fired.push(i);
            }
            balance = after;
        }
        Some(fired)
    }
}

impl fmt::Display for Condition {
    /// The canonical text: `field op threshold`, single spaces; it parses back to the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.field.as_str(), self.op.as_str(), self.threshold)
    }
}

/// The id of the delivery of a monitor's firing on one event: the same for every attempt, retry,
/// restart or replay, so receivers dedupe by it. A version 8 UUID of SHA-256 over a domain tag and
/// both ids; migration 0013's `webhook_delivery_id` computes the same in SQL (a test checks).
/// One event posts at most once to an account (a transfer's two accounts differ), so (monitor,
/// event) names at most one crossing.
pub fn delivery_id(monitor: uuid::Uuid, event: uuid::Uuid) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"ledger-webhook")
        .chain_update(monitor.as_bytes())
        .chain_update(event.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A hold lowers what is available, not the balance: an `available` monitor fires on it, a
    /// `balance` monitor does not.
    #[test]
    fn available_counts_what_pending_transfers_hold() {
        let available = Condition::parse("available < 50").unwrap();
        let balance = Condition::parse("balance < 50").unwrap();
        assert!(available.fires((100, 0), (100, 60)));
        assert!(!balance.fires((100, 0), (100, 60)));
        // Posting 40 of the 60 held releases the rest: available goes back up, the balance down.
        assert!(!available.fires((100, 60), (60, 0)));
        assert!(!balance.fires((100, 60), (60, 0)));
        assert!(balance.fires((60, 0), (40, 0)));
    }

    #[test]
    fn the_grammar_accepts_each_field_and_operator() {
        let c = Condition::parse("available < 1000").unwrap();
        assert_eq!(c, Condition { field: Field::Available, op: Op::Lt, threshold: 1000 });
        assert_eq!(Condition::parse("balance<=-5").unwrap().op, Op::Le);
        assert_eq!(Condition::parse("  balance >= +7 ").unwrap().threshold, 7);
        assert_eq!(Condition::parse("balance > 0").unwrap().op, Op::Gt);
        let edge = format!("balance < {BALANCE_MAX}");
        assert_eq!(Condition::parse(&edge).unwrap().threshold, BALANCE_MAX);
        assert_eq!(Condition::parse(&format!("balance < -{BALANCE_MAX}")).unwrap().threshold, -BALANCE_MAX);
    }

    #[test]
    fn the_grammar_refuses_everything_else() {
        use ConditionError::*;
        assert!(matches!(Condition::parse("credit < 5"), Err(UnknownField(_))));
        assert!(matches!(Condition::parse(""), Err(UnknownField(_))));
        assert_eq!(Condition::parse("balance = 5"), Err(MissingOperator));
        assert_eq!(Condition::parse("balance == 5"), Err(MissingOperator));
        assert!(matches!(Condition::parse("balance < 5.5"), Err(BadThreshold(_))));
        assert!(matches!(Condition::parse("balance < "), Err(BadThreshold(_))));
        assert!(matches!(Condition::parse("balance < 1e3"), Err(BadThreshold(_))));
        assert!(matches!(Condition::parse("balance < 5 and balance > 3"), Err(BadThreshold(_))));
        assert!(matches!(Condition::parse("balance < =5"), Err(BadThreshold(_))));
        assert_eq!(Condition::parse(&format!("balance < {}", BALANCE_MAX + 1)), Err(ThresholdOutOfRange));
        assert_eq!(Condition::parse("balance < 99999999999999999999"), Err(ThresholdOutOfRange));
        assert_eq!(Condition::parse(&format!("balance < {}", " ".repeat(CONDITION_LEN_MAX))), Err(TooLong));
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let field = prop_oneof![Just(Field::Balance), Just(Field::Available)];
        let op = prop_oneof![Just(Op::Lt), Just(Op::Le), Just(Op::Gt), Just(Op::Ge)];
        // Thresholds near the balances the postings visit, and across the whole range.
        let threshold = prop_oneof![-50i64..50, -BALANCE_MAX..=BALANCE_MAX];
        (field, op, threshold).prop_map(|(field, op, threshold)| Condition { field, op, threshold })
    }

    proptest! {
        #[test]
        fn the_canonical_text_parses_back(c in condition()) {
            prop_assert_eq!(Condition::parse(&c.to_string()), Ok(c));
        }

        /// Over any sequence of postings, a condition fires exactly at the false→true transitions
        /// of "holds" along the balances, so each crossing fires once, and never while it stays true.
        #[test]
        fn firings_are_exactly_the_false_to_true_transitions(
            c in condition(),
            start in -60i64..60,
            postings in proptest::collection::vec(prop_oneof![-20i64..=-1, 1i64..=20], 0..60),
        ) {
            let fired = c.firings(start, &postings).unwrap();
            let mut balances = vec![start];
            for p in &postings {
                balances.push(balances.last().unwrap() + p);
            }
            let expected: Vec<usize> = (0..postings.len())
                .filter(|&i| !c.holds(balances[i], 0) && c.holds(balances[i + 1], 0))
                .collect();
            prop_assert_eq!(&fired, &expected);
            // Between two firings the condition went false again: a crossing fires once.
            for pair in fired.windows(2) {
                prop_assert!((pair[0] + 1..=pair[1]).any(|i| !c.holds(balances[i], 0)));
            }
            // The number of firings is the number of times it became true.
            let became_true = balances.windows(2).filter(|w| !c.holds(w[0], 0) && c.holds(w[1], 0)).count();
            prop_assert_eq!(fired.len(), became_true);
            // Never fires on a posting after which the condition is false.
            for i in &fired {
                prop_assert!(c.holds(balances[i + 1], 0));
            }
        }

        #[test]
        fn text_that_is_not_the_grammar_never_parses_into_an_out_of_range_threshold(text in "\\PC{0,80}") {
            if let Ok(c) = Condition::parse(&text) {
                prop_assert!((-BALANCE_MAX..=BALANCE_MAX).contains(&c.threshold));
                prop_assert!(text.len() <= CONDITION_LEN_MAX);
            }
        }
    }

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        let (m, e) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        assert_eq!(delivery_id(m, e), delivery_id(m, e));
        assert_ne!(delivery_id(m, e), delivery_id(e, m));
        assert_eq!(delivery_id(m, e).get_version_num(), 8);
    }
}
