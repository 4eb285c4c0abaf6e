//! The committer's refusals and failures ([`CommandError`]) as problem responses.

use crate::problem::Problem;
use crate::write::CommandError;
use ledger_core::posting::PostingError;

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Posting(e) => posting_problem(e),
            CommandError::AccountExists(id) => Problem::account_exists(id.as_str()),
            CommandError::IdempotencyKeyReused => Problem::idempotency_key_reused(),
            CommandError::AccountNotFound(id) => Problem::account_not_found(id.as_str()),
            CommandError::SameAccount => Problem::same_account(),
            CommandError::Leg { leg, error } => {
                // The leg's own problem, naming the leg: the whole transaction is refused.
                let mut p = Problem::from(*error);
                p.detail = format!("leg {leg}: {}", p.detail);
                p
            }
            CommandError::QueueFull => Problem::unavailable("the write queue is full; retry later"),
            CommandError::ShuttingDown => Problem::unavailable("the node is shutting down"),
            CommandError::CommitterStopped => Problem::unavailable("the committer stopped before answering"),
            CommandError::Unavailable => {
                Problem::unavailable("the database is unreachable; retry with the same Idempotency-Key")
            }
            CommandError::ConnectionBroke => {
                Problem::unavailable("the database connection broke; retry with the same Idempotency-Key")
            }
            CommandError::NotApplied => {
                Problem::internal("the command was not applied; retry with the same Idempotency-Key")
            }
            CommandError::NoResult => Problem::internal("no result"),
        }
    }
}

fn posting_problem(e: PostingError) -> Problem {
    match e {
        PostingError::SameAccount => Problem::same_account(),
        PostingError::CurrencyMismatch { .. } => Problem::currency_mismatch(e.to_string()),
        PostingError::InsufficientFunds { .. } => Problem::insufficient_funds(e.to_string()),
        PostingError::BalanceOutOfRange { .. } | PostingError::Money(_) => Problem::balance_overflow(e.to_string()),
        PostingError::UnknownAccount => Problem::account_not_found("?"),
        PostingError::Frozen(id) => Problem::account_frozen(id.as_str()),
        PostingError::LegCount(_) => Problem::invalid_field(e.to_string()),
        PostingError::NotPending(_) => Problem::transfer_not_pending(e.to_string()),
        PostingError::PostExceedsReserved { .. } => Problem::post_exceeds_pending(e.to_string()),
    }
}
