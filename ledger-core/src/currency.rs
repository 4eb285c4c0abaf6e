//! ISO 4217-style currency codes: three uppercase ASCII letters. Amounts of different currencies
//! never mix, so the code is checked on every posting.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A currency code such as `USD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// The code is not three uppercase ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be three uppercase letters (ISO 4217), got {0:?}")]
pub struct CurrencyError(pub String);

impl Currency {
    /// Parses a code.
    pub fn new(code: &str) -> Result<Self, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError(code.to_owned()));
        }
        Ok(Self([bytes[0], bytes[1], bytes[2]]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_uppercase_letters_are_currencies() {
        assert_eq!(Currency::new("USD").unwrap().as_str(), "USD");
        for bad in ["usd", "US", "USDT", "U$D", ""] {
            assert!(Currency::new(bad).is_err(), "{bad}");
        }
    }
}
