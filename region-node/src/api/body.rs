//! Request bodies: JSON only, size-limited, unknown fields refused, each failure its own problem
//! type. Also the canonical form of a body, hashed to recognise an idempotent replay.

use crate::problem::Problem;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A parsed body plus the raw JSON value it came from.
pub struct JsonBody<T> {
    /// The typed body.
    pub value: T,
    /// The JSON as sent.
    pub raw: Value,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json =
            request.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
                ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(Problem::unsupported_media_type());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::payload_too_large()
            } else {
                Problem::invalid_json(e.body_text())
            }
        })?;
        let raw: Value = serde_json::from_slice(&bytes).map_err(|e| Problem::invalid_json(e.to_string()))?;
        let value = serde_json::from_value(raw.clone()).map_err(|e| classify(&e))?;
        Ok(Self { value, raw })
    }
}

fn classify(e: &serde_json::Error) -> Problem {
    let message = e.to_string();
    if message.starts_with("unknown field") {
        Problem::unknown_field(message)
    } else if message.starts_with("missing field") {
        Problem::missing_field(message)
    } else {
        Problem::invalid_field(message)
    }
}

/// SHA-256 of the body in canonical form (object keys sorted at every level, no whitespace), so
/// the same request sent with other key order or spacing is recognised as the same.
pub fn canonical_hash(value: &Value) -> String {
    hex::encode(Sha256::digest(ledger_core::canonical::canonical_json(value).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_spacing_do_not_change_the_hash() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,{"q":1,"p":2}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": {"x": [1, {"p":2, "q":1}], "y": 2}, "b": 1 }"#).unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
        let c: Value = serde_json::from_str(r#"{"b":2,"a":{"y":2,"x":[1,{"q":1,"p":2}]}}"#).unwrap();
        assert_ne!(canonical_hash(&a), canonical_hash(&c));
    }
}
