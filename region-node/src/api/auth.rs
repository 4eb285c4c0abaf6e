//! API keys: `Authorization: Bearer <key>`. Keys are stored as SHA-256 hashes with their scopes
//! (read, write, replication, reconcile); a key is looked up once and cached briefly, so authentication costs no database
//! round trip on the hot path while a revocation still takes effect within the cache lifetime.

use super::{AppState, scope_for};
use crate::problem::Problem;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a looked-up key is trusted before it is read again (revocations apply within this).
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Cached keys at most; beyond it the cache is cleared (a flood of random keys cannot grow it).
const CACHE_KEYS_MAX: usize = 10_000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// GET routes.
    Read,
    /// Everything that changes the ledger.
    Write,
    /// `/v1/replication/*` only: other regions pulling this region's events (anti-entropy). Read
    /// and write keys do not reach it, and it reaches nothing else.
    Replication,
    /// `POST /v1/conflicts/{id}/resolve` only: the reconcile service marking a conflict resolved
    /// in this region. Read and write keys do not reach it; the reconcile service's key
    /// (`reconcile_api_key`) also has read and write.
    Reconcile,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Replication => "replication",
            Scope::Reconcile => "reconcile",
        }
    }
}

/// SHA-256 of a key, hex: what the database stores.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Who made an authenticated request, for the handlers: set by [`require_key`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// SHA-256 of the API key presented, hex, as `api_keys` stores it (the same in every region).
    pub key_hash: String,
}

/// A looked-up key: its scopes (none if unknown or revoked) and when it was read.
type CachedKey = (Option<Vec<String>>, Instant);

/// Recently seen keys by hash.
#[derive(Default)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, CachedKey>>,
}

impl KeyCache {
    async fn scopes(&self, pool: &sqlx::PgPool, hash: &str) -> Result<Option<Vec<String>>, sqlx::Error> {
        if let Some((scopes, at)) = self.entries.read().expect("key cache lock").get(hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(scopes.clone());
        }
        let scopes: Option<Vec<String>> =
            sqlx::query_scalar("SELECT scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(hash)
                .fetch_optional(pool)
                .await?;
        let mut entries = self.entries.write().expect("key cache lock");
        if entries.len() >= CACHE_KEYS_MAX {
            entries.clear();
        }
        entries.insert(hash.to_owned(), (scopes.clone(), Instant::now()));
        Ok(scopes)
    }
}

/// Middleware: 401 without a valid key, 403 without the route's scope.
pub async fn require_key(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = presented else {
        return Problem::unauthorized().into_response();
    };
    let key_hash = hash_key(key);
    let scopes = match state.keys.scopes(&state.pool, &key_hash).await {
        Ok(Some(scopes)) => scopes,
        Ok(None) => return Problem::unauthorized().into_response(),
        Err(e) => return super::read_problem(e).into_response(),
    };
    let needed = scope_for(request.method(), request.uri().path());
    if !scopes.iter().any(|s| s == needed.as_str()) {
        return Problem::forbidden(needed.as_str()).into_response();
    }
    request.extensions_mut().insert(Caller { key_hash });
    next.run(request).await
}

/// Creates `key` with `scopes` unless a key with its hash exists.
pub async fn ensure_key(pool: &sqlx::PgPool, name: &str, key: &str, scopes: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO api_keys (key_hash, name, scopes) VALUES ($1, $2, $3) ON CONFLICT (key_hash) DO NOTHING")
        .bind(hash_key(key))
        .bind(name)
        .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}
