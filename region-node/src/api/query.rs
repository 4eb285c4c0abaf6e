//! Query-string parameters shared by the list endpoints: every refusal is `invalid-query`.

use super::problem::Problem;
use std::collections::HashMap;

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
