//! API tokens: `mrdn_` followed by 64 hex digits (256 random bits). Only a keyed BLAKE3 hash is
//! ever stored; its first 8 bytes are the token's public id.

use serde::{Deserialize, Serialize};

use super::policy::{GrantBody, MAX_NAME_BYTES, PolicyError, valid_group};

/// What every token starts with, so that secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "mrdn_";
/// Most groups one token may carry.
pub const MAX_GROUPS: usize = 32;
/// Most grants one token may carry.
pub const MAX_GRANTS: usize = 16;

/// A token's public id: the first 8 bytes of its hash, written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(pub u64);

impl TokenId {
    /// Parses 16 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }

    /// The id of the token with this hash.
    pub fn of(hash: &[u8; 32]) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        Self(u64::from_be_bytes(first))
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a presented token or a token record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `mrdn_` and 64 lower-case hex digits.
    #[error("a token is {TOKEN_PREFIX} followed by 64 hex digits")]
    Malformed,
    /// A name, owner or group outside its limits.
    #[error("{0}")]
    Field(&'static str),
    /// A grant or group is refused.
    #[error(transparent)]
    Grant(#[from] PolicyError),
}

/// The token text for 32 random bytes.
pub fn token_string(secret: &[u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(secret))
}

/// The stored hash of a token's text, after checking its shape.
pub fn parse_token(text: &str) -> Result<[u8; 32], TokenError> {
    let hexpart = text
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    if hexpart.len() != 64
        || !hexpart
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(TokenError::Malformed);
    }
    Ok(token_hash(text))
}

/// The keyed hash stored for a token (BLAKE3 in key-derivation mode, so that the hash of a
/// token is useless as anything but its identifier).
pub fn token_hash(text: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("meridian 2026 api token v1");
    h.update(text.as_bytes());
    *h.finalize().as_bytes()
}

/// A token as stored (the value of `_meridian/tokens/<id>`): everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The token's hash, 64 hex digits.
    pub hash: String,
    /// What it is for (`ci-deploy`, `alice-laptop`).
    pub name: String,
    /// Who is responsible for it.
    pub owner: String,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it stops working, ms since the Unix epoch (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Groups policies may bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// What the token may do, besides what policies give its groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<GrantBody>,
}

fn text_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_BYTES && !s.chars().any(char::is_control)
}

impl TokenRecord {
    /// Checks the fields' limits and every grant.
    pub fn validate(&self) -> Result<(), TokenError> {
        if !text_ok(&self.name) {
            return Err(TokenError::Field("name must be 1 to 64 printable bytes"));
        }
        if !text_ok(&self.owner) {
            return Err(TokenError::Field("owner must be 1 to 64 printable bytes"));
        }
        if self.groups.len() > MAX_GROUPS || !self.groups.iter().all(|g| valid_group(g)) {
            return Err(TokenError::Field(
                "groups: at most 32, each 1 to 64 of [A-Za-z0-9_.:@-]",
            ));
        }
        if self.grants.len() > MAX_GRANTS {
            return Err(TokenError::Field("grants: at most 16"));
        }
        for g in &self.grants {
            g.compile()?;
        }
        Ok(())
    }

    /// The stored hash, if well formed.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.hash, &mut out).ok()?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_to_its_id() {
        let text = token_string(&[7; 32]);
        assert!(text.starts_with("mrdn_") && text.len() == 5 + 64);
        let hash = parse_token(&text).unwrap();
        let id = TokenId::of(&hash);
        assert_eq!(TokenId::parse(&id.to_string()), Some(id));
        assert_eq!(parse_token("mrdn_xyz"), Err(TokenError::Malformed));
        assert_eq!(
            parse_token(&text.to_uppercase()),
            Err(TokenError::Malformed)
        );
        assert_ne!(token_hash(&token_string(&[8; 32])), hash);
    }
}
