//! URL parameters: the path's `{id}` ([`PathId`]) and the query-string parameters shared by the
//! list endpoints (every refusal of those is `invalid-query`).

use super::problem::Problem;
use axum::extract::{FromRequestParts, MatchedPath, Path};
use axum::http::request::Parts;
use std::collections::HashMap;

/// The route's one path parameter, percent-decoded. Never refused here: a segment that does not
/// decode to UTF-8 (`%FF`) is kept as sent, still percent-encoded, and the handler's own check of
/// the id refuses it with the route's problem (a `%` is in no account id, UUID or conflict id).
/// axum's `Path<String>` answered it with a `400 text/plain` of its own.
pub(super) struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Ok(Path(id)) = Path::<String>::from_request_parts(parts, state).await {
            return Ok(Self(id));
        }
        // The segment in the route's place of its `{…}`: a parameter matches one whole segment.
        let route = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
        let place = route.split('/').position(|s| s.starts_with('{'));
        let raw = place.and_then(|i| parts.uri.path().split('/').nth(i));
        raw.map(|id| Self(id.to_owned())).ok_or_else(|| Problem::internal(format!("no path parameter in {route:?}")))
    }
}

/// Refuses a parameter not in `allowed`.
pub(super) fn only(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Problem> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => {
            Err(Problem::invalid_query(format!("unknown parameter {unknown:?}; use {}", allowed.join(", "))))
        }
        None => Ok(()),
    }
}

/// The integer parameter `name`, `default` when absent, refused outside `min..=max`.
pub(super) fn integer(
    query: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Problem> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| Problem::invalid_query(format!("{name} must be an integer from {min} to {max}"))),
    }
}
