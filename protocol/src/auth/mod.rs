//! Identity and access control as replicated data (DESIGN §4b): API tokens stored only as
//! hashes, policies that bind subjects to actions on app/env/key patterns, and the index every
//! node (origin and edge) builds from the signed state to authenticate and authorize a request
//! locally, without asking anyone.
//!
//! Tokens and policies live in the reserved app [`SYSTEM_APP`], which no client address can
//! name ([`crate::Address::parse`] refuses it), so they travel, sign, digest and compact exactly
//! like configuration: a revocation reaches every edge as fast as any write.
//!
//! Nothing here reads a clock: expiry is checked against the `now_ms` the caller passes.

mod index;
mod pattern;
mod policy;
mod protection;
mod token;

pub use index::{AuthError, AuthIndex, Principal, Resource};
pub use pattern::{Pattern, PatternError};
pub use policy::{
    Action, Grant, GrantBody, PolicyError, PolicyRecord, Role, Subject, valid_group,
    valid_policy_name,
};
pub use protection::{MAX_APPROVALS, ProtectionRecord, protections};
pub use token::{
    TOKEN_PREFIX, TokenError, TokenId, TokenRecord, parse_token, token_hash, token_string,
};

/// The app that holds Meridian's own replicated records; outside the client address grammar.
pub const SYSTEM_APP: &str = "_meridian";
/// The env of [`SYSTEM_APP`] that holds token records, keyed by [`TokenId`].
pub const TOKENS_ENV: &str = "tokens";
/// The env of [`SYSTEM_APP`] that holds policies, keyed by policy name.
pub const POLICIES_ENV: &str = "policies";

/// The env of [`SYSTEM_APP`] that holds protection rules, keyed by rule name.
pub const PROTECTIONS_ENV: &str = "protections";

/// Whether `app/env` is one of the system namespaces (valid as stored data, never from clients).
pub fn is_system_namespace(app: &str, env: &str) -> bool {
    app == SYSTEM_APP
        && (env == TOKENS_ENV
            || env == POLICIES_ENV
            || env == PROTECTIONS_ENV
            || env == crate::directory::EDGES_ENV
            || env == crate::provenance::PROVENANCE_ENV)
}
