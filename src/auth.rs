//! Accounts, passwords and tokens (spec §2). No HTTP here: `api/users.rs` and `api/auth.rs`
//! translate requests into these calls.
//!
//! - Passwords are stored only as argon2id PHC strings (slow and salted); hashing runs on the
//!   blocking pool so it never stalls the async workers.
//! - A token is 32 random bytes (base64url) handed to the client once; the store keeps only its
//!   SHA-256, so neither a log nor the data directory holds a usable token. Looking a token up
//!   by its hash does not compare secrets byte by byte.
//! - The API key is compared in constant time (over SHA-256 digests, so its length is not
//!   revealed either).
//! - Failed logins are throttled per username and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use coreq_storage::{Role, StorageError, Store, Token, UnixMillis, User};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;

pub const ADMIN: &str = "admin";
/// The On-Premises default password, which must be changed at the first login.
pub const DEFAULT_PASSWORD: &str = "secret";
/// Tokens are valid this long.
pub const TOKEN_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Failed logins allowed per username and per address within `THROTTLE_WINDOW_MS`.
pub const MAX_FAILED_LOGINS: u32 = 5;
pub const THROTTLE_WINDOW_MS: u64 = 60_000;
/// Bound on the throttle's memory: the oldest entries are forgotten past this.
const MAX_THROTTLE_ENTRIES: usize = 10_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    BadCredentials,
    #[error("password change required")]
    PasswordChangeRequired,
    #[error("too many failed logins")]
    Throttled,
    #[error("{field}: {problem}")]
    Rejected { field: &'static str, problem: String },
    #[error("user exists")]
    UserExists,
    #[error("no such user")]
    NoSuchUser,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// The monitoring API key (`WA_API_KEY`), kept only as its SHA-256 and compared in constant
/// time over digests, so neither its bytes nor its length leak through timing. It needs no
/// store, so health can be checked with it while the store is still recovering.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl ApiKey {
    pub fn new(key: &str) -> ApiKey {
        ApiKey {
            digest: sha256(key.as_bytes()),
        }
    }

    pub fn matches(&self, given: &str) -> bool {
        bool::from(self.digest.ct_eq(&sha256(given.as_bytes())))
    }
}

/// A token as issued: the secret (shown once) and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: UnixMillis,
}

pub struct Accounts {
    store: Store,
    clock: Arc<dyn Clock>,
    throttle: Mutex<HashMap<String, (u32, UnixMillis)>>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Spec §2: 8–64 characters with a digit, an upper-case, a lower-case and a punctuation character.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(8..=64).contains(&n) {
        return Err("must be 8 to 64 characters".into());
    }
    let has = |f: fn(char) -> bool| password.chars().any(f);
    let kinds = [
        |c: char| c.is_ascii_digit(),
        char::is_uppercase,
        char::is_lowercase,
        |c: char| c.is_ascii_punctuation(),
    ];
    if !kinds.into_iter().all(has) {
        return Err("must contain a digit, an upper-case, a lower-case and a punctuation character".into());
    }
    Ok(())
}

/// Spec §2: 4–32 characters; printable, no `:` (it separates user and password in Basic auth).
pub fn check_username(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if !(4..=32).contains(&n) {
        return Err("must be 4 to 32 characters".into());
    }
    if name
        .chars()
        .any(|c| c == ':' || c == '/' || c.is_control() || c.is_whitespace())
    {
        return Err("must not contain ':', '/', spaces or control characters".into());
    }
    Ok(())
}

async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hashing(e.to_string()))?
}

async fn verify_password(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false)
}

impl Accounts {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Accounts {
        Accounts {
            store,
            clock,
            throttle: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the `admin` account on first start: with `initial_password` if given, else with
    /// the default password, which must be changed at the first login.
    pub async fn bootstrap(&self, initial_password: Option<&str>) -> Result<(), AuthError> {
        if self.store.user(ADMIN)?.is_some() {
            return Ok(());
        }
        let (password, must_change) = match initial_password {
            Some(p) => (p.to_owned(), false),
            None => (DEFAULT_PASSWORD.to_owned(), true),
        };
        let password_hash = hash_password(password).await?;
        self.store
            .put_user(User {
                name: ADMIN.into(),
                password_hash,
                role: Role::Admin,
                must_change_password: must_change,
            })
            .await?;
        Ok(())
    }

    fn throttled(&self, keys: &[String]) -> bool {
        let now = self.clock.now_ms();
        let table = self.throttle.lock().expect("throttle lock");
        keys.iter().any(|k| {
            table
                .get(k)
                .is_some_and(|(n, since)| *n >= MAX_FAILED_LOGINS && now < since + THROTTLE_WINDOW_MS)
        })
    }

    fn record_failure(&self, keys: &[String]) {
        let now = self.clock.now_ms();
        let mut table = self.throttle.lock().expect("throttle lock");
        if table.len() >= MAX_THROTTLE_ENTRIES {
            table.retain(|_, (_, since)| now < *since + THROTTLE_WINDOW_MS);
        }
        for k in keys {
            let entry = table.entry(k.clone()).or_insert((0, now));
            if now >= entry.1 + THROTTLE_WINDOW_MS {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    /// Checks the password and issues a token. While the default password is in use the login
    /// must carry `new_password`, which replaces it.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        new_password: Option<&str>,
        client: IpAddr,
    ) -> Result<IssuedToken, AuthError> {
        let keys = [format!("user:{username}"), format!("addr:{client}")];
        if self.throttled(&keys) {
            return Err(AuthError::Throttled);
        }
        let user = self.store.user(username)?;
        // Verify against a real hash even for unknown users, so timing does not reveal them.
        let phc = user
            .as_ref()
            .map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let ok = verify_password(password.to_owned(), phc).await;
        let Some(mut user) = user.filter(|_| ok) else {
            self.record_failure(&keys);
            return Err(AuthError::BadCredentials);
        };
        match new_password {
            Some(new) => {
                check_password(new).map_err(|problem| AuthError::Rejected {
                    field: "new_password",
                    problem,
                })?;
                user.password_hash = hash_password(new.to_owned()).await?;
                user.must_change_password = false;
                self.store.put_user(user.clone()).await?;
            }
            None if user.must_change_password => return Err(AuthError::PasswordChangeRequired),
            None => {}
        }
        self.issue_token(&user.name).await
    }

    async fn issue_token(&self, user: &str) -> Result<IssuedToken, AuthError> {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let expires_at = self.clock.now_ms() + TOKEN_TTL_MS;
        self.store
            .put_token(Token {
                hash: sha256(token.as_bytes()).to_vec(),
                user: user.to_owned(),
                expires_at,
            })
            .await?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The caller behind a Bearer token, if it is valid, unexpired and its user still exists.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, AuthError> {
        let Some(stored) = self.store.token(&sha256(token.as_bytes()))? else {
            return Ok(None);
        };
        if self.clock.now_ms() >= stored.expires_at {
            return Ok(None);
        }
        Ok(self.store.user(&stored.user)?.map(|u| Principal {
            user: u.name,
            role: u.role,
        }))
    }

    /// Revokes one token.
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        self.store.revoke_token(sha256(token.as_bytes()).to_vec()).await?;
        Ok(())
    }

    pub async fn create_user(&self, username: &str, password: &str) -> Result<(), AuthError> {
        check_username(username).map_err(|problem| AuthError::Rejected {
            field: "username",
            problem,
        })?;
        check_password(password).map_err(|problem| AuthError::Rejected {
            field: "password",
            problem,
        })?;
        if self.store.user(username)?.is_some() {
            return Err(AuthError::UserExists);
        }
        let password_hash = hash_password(password.to_owned()).await?;
        self.store
            .put_user(User {
                name: username.into(),
                password_hash,
                role: Role::User,
                must_change_password: false,
            })
            .await?;
        Ok(())
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, AuthError> {
        Ok(self.store.user(username)?)
    }

    /// Deletes a user and revokes all their tokens. `admin` cannot be deleted.
    pub async fn delete_user(&self, username: &str) -> Result<(), AuthError> {
        if username == ADMIN {
            return Err(AuthError::Rejected {
                field: "username",
                problem: "the admin account cannot be deleted".into(),
            });
        }
        if self.store.user(username)?.is_none() {
            return Err(AuthError::NoSuchUser);
        }
        self.store.delete_user(username).await?;
        Ok(())
    }
}

/// An argon2id hash of a random password, verified against when the user does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Qx9y1o1lqCqWZ0k1aJbqz2cC1kqW2Xz3bQvKQ8x4l0U";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert!(check_password("Secret1!").is_ok());
        for bad in [
            "Sh0rt!",
            "nouppercase1!",
            "NOLOWERCASE1!",
            "NoDigits!!",
            "NoPunct123",
            &"Aa1!".repeat(17),
        ] {
            assert!(check_password(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn username_rules() {
        assert!(check_username("alice").is_ok());
        for bad in ["abc", "a:bcd", "has space", &"x".repeat(33)] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_key_matches_only_the_configured_key() {
        let key = ApiKey::new("monitoring-key-123");
        assert!(key.matches("monitoring-key-123"));
        assert!(!key.matches("monitoring-key-124"));
        assert!(!key.matches(""));
    }

    #[test]
    fn dummy_hash_parses_so_unknown_users_cost_a_real_verification() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
