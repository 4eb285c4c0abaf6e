//! Session tokens for read-your-writes across regions. Every successful write answers with a
//! `Ledger-Session` token naming the version vectors of the accounts the client has written (its
//! own writes merged with the token it sent); a request that carries a token is served by a region
//! only once that region has applied everything the token names: each named account exists here
//! with a vector at least the token's. It waits up to `session_wait_ms_max`, then answers 503
//! `session-not-caught-up` with `Retry-After`, never a stale answer. A client that fails over to
//! another region therefore never sees its own payment disappear, and a debit it sends there is
//! judged against a balance that includes its earlier ones.
//!
//! Format: `s1.<payload>.<signature>`, base64url without padding; the payload is JSON
//! `[[account, {region: counter}], …]`, most recently written last; the signature is
//! HMAC-SHA256 over `s1.<payload>` with the key every region shares (`session_secret`). A session
//! names at most [`SESSION_ACCOUNTS_MAX`] accounts: the most recently written.

use super::AppState;
use crate::problem::Problem;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ledger_core::{AccountId, VersionVector};
use serde_json::Value;
use sha2::Sha256;
use sqlx::Row;
use std::time::{Duration, Instant};

/// The header carrying the token, both ways.
pub const SESSION_HEADER: &str = "ledger-session";
/// Accounts a session names at most (the most recently written).
pub const SESSION_ACCOUNTS_MAX: usize = 64;
/// Longest token accepted (64 accounts of 128 characters with three regions fit well within).
pub const SESSION_TOKEN_BYTES_MAX: usize = 32 * 1024;
/// Largest write response read to learn the vectors it reports.
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
const VERSION: &str = "s1";

/// What a session has observed: per account, the vector after the client's latest write to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Most recently written last; each account once.
    pub accounts: Vec<(AccountId, VersionVector)>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `s1.<payload>.<signature>`, or not base64url, or its JSON is not a session.
    #[error("the session token is malformed: {0}")]
    Malformed(String),
    /// Signed with another key, or altered.
    #[error("the session token's signature does not match")]
    Signature,
    /// Beyond the bounds.
    #[error("the session token is too large")]
    TooLarge,
}

impl Session {
    /// `self` with `account` observed at `vector`: merged with what was known of it, moved to the
    /// most recent place, the oldest dropped beyond [`SESSION_ACCOUNTS_MAX`].
    pub fn observe(&mut self, account: AccountId, vector: &VersionVector) {
        let mut merged = vector.clone();
        if let Some(i) = self.accounts.iter().position(|(a, _)| *a == account) {
            merged.merge(&self.accounts.remove(i).1);
        }
        self.accounts.push((account, merged));
        if self.accounts.len() > SESSION_ACCOUNTS_MAX {
            let excess = self.accounts.len() - SESSION_ACCOUNTS_MAX;
            self.accounts.drain(..excess);
        }
    }

    /// Whether a region holding `here` (an account's vector, `None` when the account is not there)
    /// has applied everything the session names of `account`.
    pub fn satisfied_by(wanted: &VersionVector, here: Option<&VersionVector>) -> bool {
        let Some(here) = here else { return false };
        wanted.to_map().iter().all(|(region, counter)| here.get(region) >= *counter)
    }

    /// The signed token.
    pub fn encode(&self, key: &[u8]) -> String {
        let list: Vec<Value> = self.accounts.iter().map(|(a, v)| serde_json::json!([a, v])).collect();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&list).expect("a session serializes"));
        let signed = format!("{VERSION}.{payload}");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sign(key, &signed)))
    }

    /// Reads and checks a token.
    pub fn decode(token: &str, key: &[u8]) -> Result<Self, TokenError> {
        if token.len() > SESSION_TOKEN_BYTES_MAX {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected s1.<payload>.<signature>".into()));
        };
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(format!("{VERSION}.{payload}").as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let list: Vec<(AccountId, VersionVector)> =
            serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if list.len() > SESSION_ACCOUNTS_MAX {
            return Err(TokenError::TooLarge);
        }
        Ok(Self { accounts: list })
    }
}

fn sign(key: &[u8], text: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The vectors a successful write's body reports: a transfer's `version_vectors`, an opening's
/// `id` and `version_vector`.
fn written(body: &Value) -> Vec<(AccountId, VersionVector)> {
    let mut out = Vec::new();
    if let Some(map) = body["version_vectors"].as_object() {
        for (account, v) in map {
            if let (Ok(a), Ok(v)) = (AccountId::new(account.clone()), serde_json::from_value(v.clone())) {
                out.push((a, v));
            }
        }
    } else if let (Some(id), Some(v)) = (body["id"].as_str(), body.get("version_vector"))
        && let (Ok(a), Ok(v)) = (AccountId::new(id), serde_json::from_value(v.clone()))
    {
        out.push((a, v));
    }
    out
}

/// Waits until this region has applied what `session` names, or the bound passes.
async fn caught_up(state: &AppState, session: &Session) -> Result<bool, sqlx::Error> {
    if session.accounts.is_empty() {
        return Ok(true);
    }
    let ids: Vec<&str> = session.accounts.iter().map(|(a, _)| a.as_str()).collect();
    let deadline = Instant::now() + Duration::from_millis(state.cfg.session_wait_ms_max);
    let mut pause = Duration::from_millis(5);
    loop {
        let rows = sqlx::query("SELECT id, version_vector FROM accounts WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&state.pool)
            .await?;
        let here: std::collections::HashMap<String, VersionVector> = rows
            .iter()
            .filter_map(|r| Some((r.get::<String, _>("id"), serde_json::from_value(r.get("version_vector")).ok()?)))
            .collect();
        if session.accounts.iter().all(|(a, v)| Session::satisfied_by(v, here.get(a.as_str()))) {
            return Ok(true);
        }
        if Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The middleware: checks and honours a sent token, and answers every successful write with the
/// token that includes it.
pub(super) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let key = state.session_key.clone();
    let sent = match request.headers().get(SESSION_HEADER) {
        None => None,
        Some(v) => match v
            .to_str()
            .map_err(|_| TokenError::Malformed("not ASCII".into()))
            .and_then(|t| Session::decode(t, &key))
        {
            Ok(s) => Some(s),
            Err(e) => return Problem::invalid_session_token(e.to_string()).into_response(),
        },
    };
    if let Some(session) = &sent {
        match caught_up(&state, session).await {
            Ok(true) => {}
            Ok(false) => {
                let mut r = Problem::session_not_caught_up(format!(
                    "region {} has not yet applied everything this session wrote elsewhere; retry shortly",
                    state.region
                ))
                .into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Err(e) => return super::read_problem(e).into_response(),
        }
    }
    let write = request.method() == Method::POST;
    let response = next.run(request).await;
    let success = matches!(response.status(), StatusCode::OK | StatusCode::CREATED);
    if !(write && success) {
        return with_token(response, sent.map(|s| s.encode(&key)));
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, RESPONSE_BYTES_MAX).await else {
        return Problem::internal("a response too large to read its vectors").into_response();
    };
    let mut session = sent.unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        for (account, vector) in written(&v) {
            session.observe(account, &vector);
        }
    }
    with_token(Response::from_parts(parts, Body::from(bytes)), Some(session.encode(&key)))
}

fn with_token(mut response: Response, token: Option<String>) -> Response {
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(SESSION_HEADER, t);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (r, c) in pairs {
            v.witness(&ledger_core::RegionId::new(*r).unwrap(), *c);
        }
        v
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering_and_other_keys() {
        let mut s = Session::default();
        s.observe(AccountId::new("alice").unwrap(), &vv(&[("us-east", 3)]));
        let t = s.encode(b"k1");
        assert_eq!(Session::decode(&t, b"k1").unwrap(), s);
        assert_eq!(Session::decode(&t, b"k2"), Err(TokenError::Signature));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"[["alice",{"us-east":1}]]"#);
        parts[1] = &forged;
        assert_eq!(Session::decode(&parts.join("."), b"k1"), Err(TokenError::Signature));
        assert!(matches!(Session::decode("s1.x", b"k1"), Err(TokenError::Malformed(_))));
        assert!(matches!(Session::decode("s2.a.b", b"k1"), Err(TokenError::Malformed(_))));
        assert_eq!(Session::decode(&"a".repeat(SESSION_TOKEN_BYTES_MAX + 1), b"k1"), Err(TokenError::TooLarge));
    }

    #[test]
    fn a_region_satisfies_a_session_only_with_every_counter_applied() {
        let wanted = vv(&[("us-east", 3), ("eu-west", 1)]);
        assert!(Session::satisfied_by(&wanted, Some(&vv(&[("us-east", 3), ("eu-west", 2)]))));
        assert!(!Session::satisfied_by(&wanted, Some(&vv(&[("us-east", 2), ("eu-west", 5)]))));
        assert!(!Session::satisfied_by(&wanted, None), "an account not here yet is not caught up");
        assert!(Session::satisfied_by(&VersionVector::new(), Some(&VersionVector::new())));
    }

    proptest! {
        /// Whatever the writes, a session names exactly the most recently written accounts (at most
        /// the bound), each once, with at least the vector of its latest write and nothing no write
        /// reported.
        #[test]
        fn observing_keeps_the_latest_accounts_merged(writes in proptest::collection::vec((0u8..100, 0u8..3, 1u64..50), 0..300)) {
            let regions = ["us-east", "eu-west", "ap-south"];
            let mut s = Session::default();
            for (a, r, c) in &writes {
                s.observe(AccountId::new(format!("a{a}")).unwrap(), &vv(&[(regions[*r as usize], *c)]));
            }
            let mut recent: Vec<u8> = Vec::new();
            for (a, _, _) in writes.iter().rev() {
                if !recent.contains(a) && recent.len() < SESSION_ACCOUNTS_MAX {
                    recent.push(*a);
                }
            }
            recent.reverse();
            let named: Vec<String> = s.accounts.iter().map(|(a, _)| a.as_str().to_owned()).collect();
            prop_assert_eq!(named, recent.iter().map(|a| format!("a{a}")).collect::<Vec<_>>());
            for (account, v) in &s.accounts {
                let a: u8 = account.as_str()[1..].parse().unwrap();
                let (_, r, c) = writes.iter().rev().find(|(x, _, _)| *x == a).unwrap();
                prop_assert!(v.get(&ledger_core::RegionId::new(regions[*r as usize]).unwrap()) >= *c);
                for (ri, name) in regions.iter().enumerate() {
                    let most = writes.iter().filter(|(x, y, _)| *x == a && *y as usize == ri).map(|(_, _, c)| *c).max().unwrap_or(0);
                    prop_assert!(v.get(&ledger_core::RegionId::new(*name).unwrap()) <= most);
                }
            }
            let t = s.encode(b"k");
            prop_assert!(t.len() <= SESSION_TOKEN_BYTES_MAX);
            prop_assert_eq!(Session::decode(&t, b"k").unwrap(), s);
        }
    }
}
