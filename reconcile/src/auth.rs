//! Who is calling: staff with argon2id password hashes, browser sessions (a random token in an
//! `HttpOnly; Secure; SameSite=Strict` cookie, a CSRF token per session checked on every form),
//! login throttling with lock-out, and hashed API tokens scoped to a role for automation. Only
//! SHA-256 digests of session and API tokens are stored, so the database never holds a usable
//! credential.

use crate::case::Role;
use crate::problem::Problem;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "reconcile_session";
/// Shortest password accepted.
pub const PASSWORD_LEN_MIN: usize = 12;
/// Longest password accepted (argon2 hashes anything, but a megabyte per login is a gift to an
/// attacker).
pub const PASSWORD_LEN_MAX: usize = 1_024;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Staff username.
    pub username: String,
    /// The role in force (a token's scope, at most its owner's role).
    pub role: Role,
    /// The session's CSRF token (none for API tokens, which are not sent by browsers on their own).
    pub csrf: Option<String>,
}

/// Errors of staff management.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// SHA-256 of a token, hex.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// argon2id with the crate's defaults (19 MiB, 2 passes), salted.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    check_password(password)?;
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

fn check_password(password: &str) -> Result<(), AuthError> {
    let n = password.chars().count();
    if !(PASSWORD_LEN_MIN..=PASSWORD_LEN_MAX).contains(&n) {
        return Err(AuthError::Invalid(format!("a password has {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} characters")));
    }
    Ok(())
}

fn check_username(username: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&username.len())
        && username.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(AuthError::Invalid("a username is 1 to 64 of a-z, 0-9, '.', '_', '-'".into())) }
}

/// Adds a staff member, or resets the role and password of an existing one.
pub async fn put_staff(pool: &PgPool, username: &str, role: Role, password: &str) -> Result<(), AuthError> {
    check_username(username)?;
    let hash = hash_password(password)?;
    sqlx::query(
        "INSERT INTO staff (username, role, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (username) DO UPDATE SET role = $2, password_hash = $3, failed_logins = 0, locked_until = NULL",
    )
    .bind(username)
    .bind(role.as_str())
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(())
}

/// Issues an API token for `username` with `role` (at most the owner's); only its digest is kept.
pub async fn issue_token(pool: &PgPool, username: &str, role: Role, label: &str) -> Result<String, AuthError> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT role FROM staff WHERE username = $1").bind(username).fetch_optional(pool).await?;
    let Some(owner) = owner.and_then(|r| Role::parse(&r)) else {
        return Err(AuthError::Invalid(format!("no staff member {username:?}")));
    };
    if role > owner {
        return Err(AuthError::Invalid(format!("a token's role cannot exceed its owner's ({})", owner.as_str())));
    }
    let token = random_token("rct_");
    sqlx::query("INSERT INTO api_tokens (token_hash, username, role, label) VALUES ($1, $2, $3, $4)")
        .bind(digest(&token))
        .bind(username)
        .bind(role.as_str())
        .bind(label)
        .execute(pool)
        .await?;
    Ok(token)
}

/// A new browser session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's value.
    pub token: String,
    /// Who.
    pub principal: Principal,
}

/// A password verification that always runs, so an unknown username takes as long as a wrong
/// password and does not reveal which usernames exist.
fn verify(password: &str, hash: Option<&str>) -> bool {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2nA1bKMJPJ7/gJbEF4kGl8v1ZG6hVQ5nTQ2eTQrnSSs";
    let parsed = PasswordHash::new(hash.unwrap_or(DUMMY)).or_else(|_| PasswordHash::new(DUMMY));
    match parsed {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && hash.is_some(),
        Err(_) => false,
    }
}

/// Checks a login; on success opens a session. `login_failures_max` failures in a row lock the
/// account for `lockout`; the answer never says whether the username exists.
pub async fn login(
    pool: &PgPool,
    username: &str,
    password: &str,
    login_failures_max: i32,
    lockout: Duration,
    session_ttl: Duration,
) -> Result<Session, Problem> {
    let refused = || Problem::unauthorized("wrong username or password");
    if username.len() > 64 || password.len() > PASSWORD_LEN_MAX * 4 {
        return Err(refused());
    }
    let row = sqlx::query("SELECT role, password_hash, locked_until > now() AS locked FROM staff WHERE username = $1")
        .bind(username)
        .fetch_optional(pool)
        .await?;
    let (role, hash, locked) = match &row {
        Some(r) => (
            r.try_get::<String, _>("role")?,
            Some(r.try_get::<String, _>("password_hash")?),
            r.try_get::<Option<bool>, _>("locked")?.unwrap_or(false),
        ),
        None => (String::new(), None, false),
    };
    let ok = verify(password, hash.as_deref());
    if locked {
        return Err(Problem::locked("too many failed logins: the account is locked for a while"));
    }
    let Some(role) = Role::parse(&role).filter(|_| ok) else {
        if row.is_some() {
            sqlx::query(
                "UPDATE staff SET failed_logins = failed_logins + 1,
                     locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + make_interval(secs => $3) END
                 WHERE username = $1",
            )
            .bind(username)
            .bind(login_failures_max)
            .bind(lockout.num_seconds() as f64)
            .execute(pool)
            .await?;
        }
        return Err(refused());
    };
    sqlx::query("UPDATE staff SET failed_logins = 0, locked_until = NULL WHERE username = $1")
        .bind(username)
        .execute(pool)
        .await?;
    let token = random_token("rcs_");
    let csrf = random_token("");
    sqlx::query("INSERT INTO sessions (token_hash, username, csrf, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(digest(&token))
        .bind(username)
        .bind(&csrf)
        .bind(Utc::now() + session_ttl)
        .execute(pool)
        .await?;
    Ok(Session { token, principal: Principal { username: username.to_owned(), role, csrf: Some(csrf) } })
}

/// The session a cookie names, if it is live.
pub async fn session(pool: &PgPool, token: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.username, st.role, s.csrf FROM sessions s JOIN staff st USING (username)
         WHERE s.token_hash = $1 AND s.expires_at > now()",
    )
    .bind(digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| {
        Some(Principal {
            username: r.get("username"),
            role: Role::parse(r.get::<&str, _>("role"))?,
            csrf: Some(r.get("csrf")),
        })
    }))
}

/// Ends a session.
pub async fn logout(pool: &PgPool, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(digest(token)).execute(pool).await?;
    Ok(())
}

/// The caller an API token names, if it is live: the token's role, capped by its owner's current
/// role (demoting a person demotes their tokens).
pub async fn bearer(pool: &PgPool, token: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT t.username, t.role AS token_role, st.role AS owner_role FROM api_tokens t JOIN staff st USING (username)
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| {
        let token_role = Role::parse(r.get::<&str, _>("token_role"))?;
        let owner_role = Role::parse(r.get::<&str, _>("owner_role"))?;
        Some(Principal { username: r.get("username"), role: token_role.min(owner_role), csrf: None })
    }))
}

/// Compares a form's CSRF token with the session's in constant time.
pub fn csrf_matches(principal: &Principal, sent: Option<&str>) -> bool {
    match (&principal.csrf, sent) {
        (Some(expected), Some(sent)) if expected.len() == sent.len() => {
            expected.bytes().zip(sent.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", Some(&h)));
        assert!(!verify("correct horse batterz", Some(&h)));
        assert!(!verify("correct horse battery", None), "no user, no login, even with the dummy's password");
        assert!(hash_password("short").is_err());
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        let p = Principal { username: "a".into(), role: Role::Viewer, csrf: Some("abc".into()) };
        assert!(csrf_matches(&p, Some("abc")));
        assert!(!csrf_matches(&p, Some("abd")) && !csrf_matches(&p, None) && !csrf_matches(&p, Some("ab")));
        let token = Principal { csrf: None, ..p };
        assert!(!csrf_matches(&token, Some("abc")));
    }
}
