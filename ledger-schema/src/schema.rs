//! The regional PostgreSQL schema: the repository's migrations, embedded, and the claim that ties a
//! database to one region.

use ledger_core::RegionId;
use sqlx::migrate::Migrator;

/// The regional schema, embedded so the launcher, the node and the tests apply exactly the
/// repository's migrations (`../migrations`; `build.rs` rebuilds when one is added).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Why a database could not be claimed for a region.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// PostgreSQL unreachable or failing.
    #[error("postgresql: {0}")]
    Db(#[from] sqlx::Error),
    /// The database already belongs to another region.
    #[error("the database belongs to region {found}, not {expected}")]
    WrongRegion {
        /// The region that asked.
        expected: String,
        /// The region the database records.
        found: String,
    },
}

/// Records `region` in a fresh (migrated) database, or refuses a database of another region: a
/// node pointed at the wrong region's database would mix two regions' histories.
/// (A pool, not a connection: a future over `&mut PgConnection` is not `Send` for every lifetime, so
/// it could not run on a spawned task.)
pub async fn claim_region(pool: &sqlx::PgPool, region: &RegionId) -> Result<(), ClaimError> {
    sqlx::query("INSERT INTO region_identity (region) VALUES ($1) ON CONFLICT (singleton) DO NOTHING")
        .bind(region.as_str())
        .execute(pool)
        .await?;
    let found: String = sqlx::query_scalar("SELECT region FROM region_identity").fetch_one(pool).await?;
    if found != region.as_str() {
        return Err(ClaimError::WrongRegion { expected: region.to_string(), found });
    }
    Ok(())
}
