//! The audit trail: append-only (a trigger refuses UPDATE, DELETE and TRUNCATE), and every entry's
//! hash is SHA-256 over the previous entry's hash and the entry's own content, so an edit made
//! behind the trigger's back (by someone who can disable it) breaks the chain at that entry.
//! [`verify`] recomputes the chain and names the first entry that does not match.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry, as hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the trail, from 1, without gaps.
    pub seq: i64,
    /// When (microseconds, as stored).
    pub at: DateTime<Utc>,
    /// Who: a staff username, or `system:<component>`.
    pub actor: String,
    /// What, e.g. `proposal.approved`.
    pub action: String,
    /// The case it concerns.
    pub case_id: Option<uuid::Uuid>,
    /// The proposal it concerns.
    pub proposal_id: Option<uuid::Uuid>,
    /// Why, in the actor's words.
    pub reason: Option<String>,
    /// State before.
    pub before: Option<Value>,
    /// State after.
    pub after: Option<Value>,
}

/// JSON with object keys sorted at every depth: PostgreSQL's JSONB reorders keys, so the hash is
/// taken over a form that does not depend on storage.
pub use ledger_core::canonical::canonical_json as canonical;

impl Entry {
    /// The entry's hash, chained to `prev_hash`.
    pub fn hash(&self, prev_hash: &str) -> String {
        let content = json!({
            "seq": self.seq,
            "at": self.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "actor": self.actor,
            "action": self.action,
            "case_id": self.case_id,
            "proposal_id": self.proposal_id,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
        });
        hex::encode(Sha256::new().chain_update(prev_hash.as_bytes()).chain_update(canonical(&content)).finalize())
    }
}

/// What to record; `seq`, `at` and the hashes are the trail's.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// The case.
    pub case_id: Option<uuid::Uuid>,
    /// The proposal.
    pub proposal_id: Option<uuid::Uuid>,
    /// Why.
    pub reason: Option<&'a str>,
    /// Before.
    pub before: Option<Value>,
    /// After.
    pub after: Option<Value>,
}

/// Any constant: the lock that serializes appends, so two transactions never chain to the same
/// previous entry.
const APPEND_LOCK: i64 = 0x0061_7564_6974;

/// Appends one entry inside the caller's transaction (it becomes visible, chained, with it).
pub async fn append(tx: &mut PgConnection, r: Record<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPEND_LOCK).execute(&mut *tx).await?;
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let (prev_seq, prev_hash) = match head {
        Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?),
        None => (0, GENESIS.to_owned()),
    };
    let entry = Entry {
        seq: prev_seq + 1,
        at: Utc::now().trunc_subsecs(6),
        actor: r.actor.to_owned(),
        action: r.action.to_owned(),
        case_id: r.case_id,
        proposal_id: r.proposal_id,
        reason: r.reason.map(str::to_owned),
        before: r.before,
        after: r.after,
    };
    let hash = entry.hash(&prev_hash);
    sqlx::query(
        "INSERT INTO audit (seq, at, actor, action, case_id, proposal_id, reason, before, after, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(entry.case_id)
    .bind(entry.proposal_id)
    .bind(&entry.reason)
    .bind(&entry.before)
    .bind(&entry.after)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    Ok(entry.seq)
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry matches; how many there are.
    Intact(i64),
    /// The first entry that does not match, and how.
    Broken {
        /// Its position.
        seq: i64,
        /// What is wrong.
        why: String,
    },
}

/// Rows read per page while verifying.
const VERIFY_PAGE: i64 = 1_000;

/// Recomputes the whole chain.
pub async fn verify(pool: &PgPool) -> Result<Verdict, sqlx::Error> {
    let (mut expected_seq, mut prev) = (1i64, GENESIS.to_owned());
    loop {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, case_id, proposal_id, reason, before, after, prev_hash, hash
             FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(VERIFY_PAGE)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(Verdict::Intact(expected_seq - 1));
        }
        for row in rows {
            let entry = Entry {
                seq: row.try_get("seq")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                case_id: row.try_get("case_id")?,
                proposal_id: row.try_get("proposal_id")?,
                reason: row.try_get("reason")?,
                before: row.try_get("before")?,
                after: row.try_get("after")?,
            };
            if entry.seq != expected_seq {
                return Ok(Verdict::Broken { seq: expected_seq, why: format!("entry {expected_seq} is missing") });
            }
            let (stored_prev, stored_hash): (String, String) = (row.try_get("prev_hash")?, row.try_get("hash")?);
            if stored_prev != prev {
                return Ok(Verdict::Broken {
                    seq: entry.seq,
                    why: "its previous-hash does not match the entry before".into(),
                });
            }
            if entry.hash(&prev) != stored_hash {
                return Ok(Verdict::Broken { seq: entry.seq, why: "its content does not match its hash".into() });
            }
            prev = stored_hash;
            expected_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_to_an_entry_changes_its_hash() {
        let e = Entry {
            seq: 1,
            at: Utc::now().trunc_subsecs(6),
            actor: "alice".into(),
            action: "proposal.approved".into(),
            case_id: Some(uuid::Uuid::nil()),
            proposal_id: None,
            reason: Some("ok".into()),
            before: Some(json!({"state": "proposed"})),
            after: Some(json!({"state": "approved"})),
        };
        let h = e.hash(GENESIS);
        let mut changed = e.clone();
        changed.reason = Some("ok!".into());
        assert_ne!(changed.hash(GENESIS), h);
        let mut changed = e.clone();
        changed.after = Some(json!({"state": "resolved"}));
        assert_ne!(changed.hash(GENESIS), h);
        assert_ne!(e.hash("1"), h, "chained to the previous hash");
    }
}
