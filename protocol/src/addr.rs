//! The address grammar: `(app, env, key)` and its validation (DESIGN §3).
//!
//! Every address that enters the system from outside passes through [`Address::parse`], so the
//! rest of the code can assume names are well formed.

use serde::{Deserialize, Serialize};

/// The largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The largest app or env name, in bytes.
pub const MAX_NAME_BYTES: usize = 63;
/// The name that stands for "all apps" or "all environments".
pub const WILDCARD: &str = "_";

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The app name does not match `[a-z0-9][a-z0-9_-]{0,62}` and is not `_`.
    #[error("app {0:?} must be `_` or match [a-z0-9][a-z0-9_-]{{0,62}}")]
    InvalidApp(String),
    /// The env name does not match `[a-z0-9][a-z0-9_-]{0,62}` and is not `_`.
    #[error("env {0:?} must be `_` or match [a-z0-9][a-z0-9_-]{{0,62}}")]
    InvalidEnv(String),
    /// The key is empty, too long, or has a segment outside `[a-z0-9][a-z0-9_-]*`.
    #[error(
        "key {0:?} must be dot-separated segments matching [a-z0-9][a-z0-9_-]*, at most 256 bytes"
    )]
    InvalidKey(String),
}

/// Where a value lives: an app, an environment and a dotted key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    /// Application name, or `_` for all apps.
    pub app: String,
    /// Environment name, or `_` for all environments.
    pub env: String,
    /// Dotted key such as `services.payment.database_url`.
    pub key: String,
}

impl Address {
    /// Validates the three parts and builds an address.
    pub fn parse(app: &str, env: &str, key: &str) -> Result<Self, AddressError> {
        validate_app(app)?;
        validate_env(env)?;
        validate_key(key)?;
        Ok(Self {
            app: app.to_owned(),
            env: env.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Whether all three parts are well formed (used to check data read back from disk or
    /// wire): a client address, or a record of one of the system namespaces
    /// ([`crate::auth::SYSTEM_APP`]), which [`Address::parse`] never yields.
    pub fn is_valid(&self) -> bool {
        (validate_app(&self.app).is_ok() || self.is_system())
            && validate_env(&self.env).is_ok()
            && (validate_key(&self.key).is_ok() || is_internal_record(&self.key))
    }

    /// An address of one of the system namespaces (tokens, policies).
    pub fn system(env: &str, key: &str) -> Result<Self, AddressError> {
        validate_key(key)?;
        let address = Self {
            app: crate::auth::SYSTEM_APP.to_owned(),
            env: env.to_owned(),
            key: key.to_owned(),
        };
        if address.is_system() {
            Ok(address)
        } else {
            Err(AddressError::InvalidEnv(env.to_owned()))
        }
    }

    /// The record of flag `flag` of `app/env` ([`crate::flags`]); the parts are checked.
    pub fn flag(app: &str, env: &str, flag: &str) -> Result<Self, AddressError> {
        validate_app(app)?;
        validate_env(env)?;
        crate::flags::validate_flag_key(flag)
            .map_err(|_| AddressError::InvalidKey(flag.to_owned()))?;
        Ok(Self {
            app: app.to_owned(),
            env: env.to_owned(),
            key: crate::flags::record_key(flag),
        })
    }

    /// Whether this is a record of a flag set rather than a configuration key.
    pub fn is_flag(&self) -> bool {
        crate::flags::is_flag_record(&self.key)
    }

    /// Whether this is a record Meridian keeps beside an app/env's keys (a flag set's, the
    /// secrets' data keys) rather than a configuration key.
    pub fn is_internal(&self) -> bool {
        is_internal_record(&self.key)
    }

    /// Whether this is a record of one of the system namespaces.
    pub fn is_system(&self) -> bool {
        crate::auth::is_system_namespace(&self.app, &self.env)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.app, self.env, self.key)
    }
}

/// Whether `key` names a record Meridian keeps beside an app/env's keys: a flag set's records
/// or the namespace's data keys ([`crate::secrets::DATA_KEY_RECORD`]). They start with `_`,
/// which no client key may.
pub fn is_internal_record(key: &str) -> bool {
    key == crate::secrets::DATA_KEY_RECORD || crate::flags::is_flag_record(key)
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_name_rest(b: u8) -> bool {
    is_name_start(b) || b == b'_' || b == b'-'
}

fn valid_name(name: &str) -> bool {
    if name == WILDCARD {
        return true;
    }
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_NAME_BYTES
                && is_name_start(*first)
                && rest.iter().all(|b| is_name_rest(*b))
        }
        None => false,
    }
}

/// Checks an app name.
pub fn validate_app(app: &str) -> Result<(), AddressError> {
    if valid_name(app) {
        Ok(())
    } else {
        Err(AddressError::InvalidApp(app.to_owned()))
    }
}

/// Checks an env name.
pub fn validate_env(env: &str) -> Result<(), AddressError> {
    if valid_name(env) {
        Ok(())
    } else {
        Err(AddressError::InvalidEnv(env.to_owned()))
    }
}

/// Checks a key, or a key prefix when `allow_partial` (an empty prefix or a trailing
/// partial segment is allowed there).
fn check_key(key: &str, allow_partial: bool) -> bool {
    if key.len() > MAX_KEY_BYTES {
        return false;
    }
    if key.is_empty() {
        return allow_partial;
    }
    let segments: Vec<&str> = key.split('.').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        let bytes = seg.as_bytes();
        match bytes.split_first() {
            Some((first, rest)) => is_name_start(*first) && rest.iter().all(|b| is_name_rest(*b)),
            None => allow_partial && i == last,
        }
    })
}

/// Checks a full key.
pub fn validate_key(key: &str) -> Result<(), AddressError> {
    if check_key(key, false) {
        Ok(())
    } else {
        Err(AddressError::InvalidKey(key.to_owned()))
    }
}

/// Checks a key prefix used by list queries (`services.` and `` are allowed).
pub fn validate_key_prefix(prefix: &str) -> Result<(), AddressError> {
    if check_key(prefix, true) {
        Ok(())
    } else {
        Err(AddressError::InvalidKey(prefix.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_grammar() {
        assert!(Address::parse("payments", "prod", "services.payment.database_url").is_ok());
        assert!(Address::parse("_", "_", "a").is_ok());
        assert!(Address::parse("a-b_c9", "eu-1", "x-y.z_0").is_ok());
        let long_name = "a".repeat(63);
        assert!(Address::parse(&long_name, "p", "k").is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        let long_name = "a".repeat(64);
        for (app, env, key) in [
            ("", "prod", "k"),
            ("Pay", "prod", "k"),
            ("-pay", "prod", "k"),
            (long_name.as_str(), "prod", "k"),
            ("pay", "__", "k"),
            ("pay", "prod", ""),
            ("pay", "prod", "a..b"),
            ("pay", "prod", ".a"),
            ("pay", "prod", "a."),
            ("pay", "prod", "A"),
            ("pay", "prod", "a/b"),
            ("pay", "prod", "_a"),
        ] {
            assert!(
                Address::parse(app, env, key).is_err(),
                "{app}/{env}/{key} accepted"
            );
        }
        let long_key = format!("{}.b", "a".repeat(255));
        assert!(matches!(
            Address::parse("a", "b", &long_key),
            Err(AddressError::InvalidKey(_))
        ));
    }

    #[test]
    fn prefixes_may_be_partial() {
        assert!(validate_key_prefix("").is_ok());
        assert!(validate_key_prefix("services.").is_ok());
        assert!(validate_key_prefix("serv").is_ok());
        assert!(validate_key_prefix("Serv").is_err());
        assert!(validate_key_prefix("a..").is_err());
    }
}
