//! Idempotency keys are scoped to the API key that used them: two tenants choosing the same key
//! must never see each other's transfer replayed, nor a 409. The key stored (in `idempotency_keys`,
//! `transfers`, `account_events` and the replicated `TransferPosted` event) is
//! `<SHA-256 of the API key, hex>:<client key>`; every response shows the client's part only.
//!
//! The scope is the API key's hash as `api_keys` stores it, so it is the same in every region for
//! the same API key: a client retrying in another region still meets its own key there (and
//! remote apply still reports the pair as `duplicate-intent`).

/// Length of the scope: a SHA-256 in lower-case hex.
const SCOPE_LEN: usize = 64;

/// The stored form of `client_key` used with the API key whose hash is `key_hash`.
pub fn scoped(key_hash: &str, client_key: &str) -> String {
    debug_assert!(is_scope(key_hash), "a scope is a SHA-256 in hex");
    format!("{key_hash}:{client_key}")
}

/// The client's part of a stored key; a key stored before keys were scoped is shown as stored.
pub fn client_part(stored: &str) -> &str {
    match stored.split_at_checked(SCOPE_LEN) {
        Some((scope, rest)) if is_scope(scope) => rest.strip_prefix(':').unwrap_or(stored),
        _ => stored,
    }
}

fn is_scope(s: &str) -> bool {
    s.len() == SCOPE_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::{client_part, scoped};

    #[test]
    fn the_client_sees_its_own_key_whatever_it_contains() {
        let hash = crate::api::hash_key("some-api-key");
        for key in ["k", "a:b", "x".repeat(255).as_str(), &format!("{hash}:nested")] {
            let stored = scoped(&hash, key);
            assert_ne!(stored, key);
            assert_eq!(client_part(&stored), key);
        }
        assert_ne!(scoped(&hash, "k"), scoped(&crate::api::hash_key("another"), "k"));
        // Keys stored before scoping are shown unchanged.
        assert_eq!(client_part("legacy:key"), "legacy:key");
    }
}
