//! The plain PostgreSQL ledger of `ledgerctl bench --baseline` (schema and PL/pgSQL function in
//! `ledgerctl/sql/baseline.sql`): what the node's write path is measured against, on the same
//! PostgreSQL instance, so a ratio says what our design buys or costs over the obvious one.
//!
//! Two drivers of the same tables: [`Driver::Plain`] sends the transaction's statements one by one
//! (lock both accounts, check, two updates, two inserts), [`Driver::Plpgsql`] calls one function.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

/// The schema and the PL/pgSQL transfer function.
pub const SCHEMA_SQL: &str = include_str!("../sql/baseline.sql");
/// The database the baseline lives in, beside the region's own.
pub const DATABASE: &str = "ledger_baseline";

/// How a transfer reaches the baseline's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// One statement per round trip, from the client.
    Plain,
    /// One call of `baseline_transfer`, a single round trip.
    Plpgsql,
}

/// What became of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Applied,
    /// The idempotency key was already used: nothing changed.
    Replayed,
    /// Refused with this reason (`insufficient_funds`, `unknown_account`, ...): nothing changed.
    Refused(String),
}

impl Outcome {
    fn from_word(word: &str) -> Self {
        match word {
            "applied" => Self::Applied,
            "replayed" => Self::Replayed,
            other => Self::Refused(other.to_owned()),
        }
    }
}

/// The baseline ledger's connection pool.
#[derive(Debug, Clone)]
pub struct Baseline {
    pool: PgPool,
}

/// Totals the invariants are checked on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Audit {
    /// Accounts.
    pub accounts: i64,
    /// Committed transfers.
    pub transfers: i64,
    /// Sum of every balance (zero when money is conserved), as text: it may exceed 64 bits.
    pub balance_sum: String,
    /// Accounts below zero that may not be.
    pub overdrawn: i64,
    /// Accounts whose balance differs from the sum of their entries.
    pub balance_not_entries: i64,
    /// Transfers whose entries do not net to zero or are not exactly two.
    pub unbalanced_transfers: i64,
}

impl Audit {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.balance_sum == "0"
            && self.overdrawn == 0
            && self.balance_not_entries == 0
            && self.unbalanced_transfers == 0
    }
}

impl Baseline {
    /// Connects to `database_url` (the database must exist) with `connections` connections and
    /// creates the schema if missing.
    pub async fn connect(database_url: &str, connections: u32) -> Result<Self, sqlx::Error> {
        let mut conn = sqlx::PgConnection::connect(database_url).await?;
        // Several sessions may prepare the schema at once; the lock makes that one at a time.
        sqlx::query("SELECT pg_advisory_lock(7365)").execute(&mut conn).await?;
        let created = sqlx::raw_sql(SCHEMA_SQL).execute(&mut conn).await;
        sqlx::query("SELECT pg_advisory_unlock(7365)").execute(&mut conn).await?;
        created?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .min_connections(connections.max(1))
            .connect(database_url)
            .await?;
        Ok(Self { pool })
    }

    /// Opens an account (an existing one of the same id is kept as it is).
    pub async fn open_account(&self, id: &str, currency: &str, allow_negative: bool) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO baseline_account (id, currency, allow_negative) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(currency)
        .bind(allow_negative)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves `amount` from `from` to `to` once per `key`.
    pub async fn transfer(
        &self,
        driver: Driver,
        key: &str,
        from: &str,
        to: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Outcome, sqlx::Error> {
        match driver {
            Driver::Plpgsql => {
                let word: String = sqlx::query_scalar("SELECT baseline_transfer($1, $2, $3, $4, $5)")
                    .bind(key)
                    .bind(from)
                    .bind(to)
                    .bind(amount)
                    .bind(currency)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(Outcome::from_word(&word))
            }
            Driver::Plain => self.plain_transfer(key, from, to, amount, currency).await,
        }
    }

    async fn plain_transfer(
        &self,
        key: &str,
        from: &str,
        to: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Outcome, sqlx::Error> {
        let refused = |why: &str| Ok(Outcome::Refused(why.to_owned()));
        if amount <= 0 {
            return refused("invalid_amount");
        }
        if from == to {
            return refused("same_account");
        }
        let mut tx = self.pool.begin().await?;
        // Both rows locked in id order, so two transfers between the same pair cannot deadlock.
        let rows = sqlx::query(
            "SELECT id, currency, balance, allow_negative FROM baseline_account
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&[from, to][..])
        .fetch_all(&mut *tx)
        .await?;
        let find = |id: &str| rows.iter().find(|r| r.get::<String, _>("id") == id);
        let (Some(debit), Some(credit)) = (find(from), find(to)) else { return refused("unknown_account") };
        if debit.get::<String, _>("currency") != currency || credit.get::<String, _>("currency") != currency {
            return refused("currency_mismatch");
        }
        let Some(debit_after) = debit.get::<i64, _>("balance").checked_sub(amount) else {
            return refused("overflow");
        };
        if debit_after < 0 && !debit.get::<bool, _>("allow_negative") {
            return refused("insufficient_funds");
        }
        let Some(credit_after) = credit.get::<i64, _>("balance").checked_add(amount) else {
            return refused("overflow");
        };
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO baseline_transfer (idempotency_key, debit_account, credit_account, amount, currency)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(key)
        .bind(from)
        .bind(to)
        .bind(amount)
        .bind(currency)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else { return Ok(Outcome::Replayed) };
        for (account, balance) in [(from, debit_after), (to, credit_after)] {
            sqlx::query("UPDATE baseline_account SET balance = $2 WHERE id = $1")
                .bind(account)
                .bind(balance)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO baseline_entry (transfer_id, account_id, amount, balance_after)
             VALUES ($1, $2, $3, $4), ($1, $5, $6, $7)",
        )
        .bind(id)
        .bind(from)
        .bind(-amount)
        .bind(debit_after)
        .bind(to)
        .bind(amount)
        .bind(credit_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::Applied)
    }

    /// Reads the totals of the accounts whose id starts with `prefix` (one run's accounts; a
    /// transfer belongs to the run when its debit account does).
    pub async fn audit(&self, prefix: &str) -> Result<Audit, sqlx::Error> {
        let like = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM baseline_account WHERE id LIKE $1) AS accounts,
               (SELECT count(*) FROM baseline_transfer WHERE debit_account LIKE $1) AS transfers,
               (SELECT coalesce(sum(balance::numeric), 0)::text FROM baseline_account WHERE id LIKE $1) AS balance_sum,
               (SELECT count(*) FROM baseline_account WHERE id LIKE $1 AND balance < 0 AND NOT allow_negative)
                 AS overdrawn,
               (SELECT count(*) FROM baseline_account a
                  LEFT JOIN (SELECT account_id, sum(amount) AS s FROM baseline_entry GROUP BY account_id) e
                    ON e.account_id = a.id
                 WHERE a.id LIKE $1 AND a.balance <> coalesce(e.s, 0))
                 AS balance_not_entries,
               (SELECT count(*) FROM baseline_transfer t
                  LEFT JOIN (SELECT transfer_id, count(*) AS n, sum(amount) AS s FROM baseline_entry
                             GROUP BY transfer_id) e
                    ON e.transfer_id = t.id
                 WHERE t.debit_account LIKE $1 AND (e.n IS DISTINCT FROM 2 OR e.s <> 0))
                 AS unbalanced_transfers",
        )
        .bind(like)
        .fetch_one(&self.pool)
        .await?;
        Ok(Audit {
            accounts: row.try_get("accounts")?,
            transfers: row.try_get("transfers")?,
            balance_sum: row.try_get("balance_sum")?,
            overdrawn: row.try_get("overdrawn")?,
            balance_not_entries: row.try_get("balance_not_entries")?,
            unbalanced_transfers: row.try_get("unbalanced_transfers")?,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the baseline's database on the server of `server_url` (any database URL of it) when
/// missing, and returns the baseline database's URL.
pub async fn ensure_database(server_url: &str) -> Result<String, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(DATABASE)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        // Two benches racing here: the loser's CREATE fails as a duplicate, which is fine.
        if let Err(e) = sqlx::query("CREATE DATABASE ledger_baseline").execute(&mut conn).await {
            let duplicate = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P04" || c == "23505");
            if !duplicate {
                return Err(e);
            }
        }
    }
    let _ = conn.close().await;
    Ok(with_database(server_url, DATABASE))
}

/// `url` with its database (the path) replaced by `database`, keeping any query string.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The path starts at the first '/' after the authority ("postgres://user:pw@host:port/db").
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/ledger", DATABASE),
            "postgres://u:p@127.0.0.1:5432/ledger_baseline"
        );
        assert_eq!(with_database("postgres://u:p@h:1/db?sslmode=disable", "x"), "postgres://u:p@h:1/x?sslmode=disable");
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }

    #[test]
    fn outcomes_are_read_from_the_function_s_words() {
        assert_eq!(Outcome::from_word("applied"), Outcome::Applied);
        assert_eq!(Outcome::from_word("replayed"), Outcome::Replayed);
        assert_eq!(Outcome::from_word("insufficient_funds"), Outcome::Refused("insufficient_funds".into()));
    }
}
