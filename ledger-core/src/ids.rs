//! Identifiers that cross every boundary (HTTP, PostgreSQL, Kafka keys and topic names), validated
//! once at the edge so the rest of the code can trust them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest account id accepted: it is a Kafka key and a primary key, so it stays short.
pub const ACCOUNT_ID_LEN_MAX: usize = 64;
/// Longest region name accepted: it prefixes mirrored topic names (`<region>.ledger.events`).
pub const REGION_ID_LEN_MAX: usize = 32;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or longer than the limit.
    #[error("{kind} must be 1 to {max} characters long, got {len}")]
    Length {
        /// Which identifier.
        kind: &'static str,
        /// The limit.
        max: usize,
        /// What was given.
        len: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} may contain only {allowed}, got {value:?}")]
    Charset {
        /// Which identifier.
        kind: &'static str,
        /// The allowed set, for the message.
        allowed: &'static str,
        /// What was given.
        value: String,
    },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() || value.len() > max {
        return Err(IdError::Length { kind, max, len: value.len() });
    }
    if !value.chars().all(ok) {
        return Err(IdError::Charset { kind, allowed, value: value.to_owned() });
    }
    Ok(())
}

/// An account identifier chosen by the client: ASCII letters, digits, `_`, `-`, `.` and `:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Validates and wraps an account id.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check("account id", &value, ACCOUNT_ID_LEN_MAX, "ASCII letters, digits, '_', '-', '.', ':'", |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
        })?;
        Ok(Self(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> Self {
        value.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A region name such as `us-east`: lowercase ASCII letters, digits and `-`, so it is safe in topic
/// names, database names and file paths.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionId(String);

impl RegionId {
    /// Validates and wraps a region name.
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        check("region", &value, REGION_ID_LEN_MAX, "lowercase ASCII letters, digits and '-'", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })?;
        Ok(Self(value))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<RegionId> for String {
    fn from(value: RegionId) -> Self {
        value.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_outside_length_or_charset_are_refused() {
        assert!(AccountId::new("acc-1:usd").is_ok());
        assert!(matches!(AccountId::new(""), Err(IdError::Length { .. })));
        assert!(matches!(AccountId::new("a".repeat(65)), Err(IdError::Length { .. })));
        assert!(matches!(AccountId::new("acc 1"), Err(IdError::Charset { .. })));
        assert!(matches!(AccountId::new("é"), Err(IdError::Charset { .. })));
    }

    #[test]
    fn region_names_are_topic_safe() {
        assert!(RegionId::new("us-east").is_ok());
        assert!(RegionId::new("US-East").is_err());
        assert!(RegionId::new("us.east").is_err());
    }
}
