//! Actions, built-in roles, grants and the policy records that bind subjects to them.

use serde::{Deserialize, Serialize};

use super::pattern::{Pattern, PatternError};
use super::token::TokenId;

/// Most resource patterns one grant may list.
pub const MAX_RESOURCES: usize = 64;
/// Most subjects one policy may bind.
pub const MAX_SUBJECTS: usize = 256;
/// Longest policy name, group name or description, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 512;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Read values, lists, resolved config, history, diffs and watch streams.
    Read,
    /// Put, patch and write in transactions.
    Write,
    /// Delete keys.
    Delete,
    /// Roll a key or a namespace back.
    Rollback,
    /// Register and remove schemas.
    Schema,
    /// Manage tokens and policies.
    Admin,
    /// Read the audit log.
    AuditRead,
    /// Change feature flags.
    Flag,
    /// Reveal secrets.
    SecretRead,
    /// Write secrets.
    SecretWrite,
    /// Approve changes to protected environments.
    Approve,
    /// Apply a change request to a protected environment without its approvals (audited as
    /// such).
    BreakGlass,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 12] = [
        Self::Read,
        Self::Write,
        Self::Delete,
        Self::Rollback,
        Self::Schema,
        Self::Admin,
        Self::AuditRead,
        Self::Flag,
        Self::SecretRead,
        Self::SecretWrite,
        Self::Approve,
        Self::BreakGlass,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The name used in policies and error messages (`audit-read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Rollback => "rollback",
            Self::Schema => "schema",
            Self::Admin => "admin",
            Self::AuditRead => "audit-read",
            Self::Flag => "flag",
            Self::SecretRead => "secret-read",
            Self::SecretWrite => "secret-write",
            Self::Approve => "approve",
            Self::BreakGlass => "break-glass",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in role: a named set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read.
    Viewer,
    /// Read, write, delete, rollback, schema and flag changes.
    Editor,
    /// Every action.
    Admin,
}

impl Role {
    /// The actions the role grants.
    pub fn actions(self) -> &'static [Action] {
        match self {
            Self::Viewer => &[Action::Read],
            Self::Editor => &[
                Action::Read,
                Action::Write,
                Action::Delete,
                Action::Rollback,
                Action::Schema,
                Action::Flag,
            ],
            Self::Admin => &Action::ALL,
        }
    }
}

/// A grant as written in a token or policy: a role or a list of actions, on resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// A built-in role (its actions are added to `actions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Actions granted in addition to the role's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Resource patterns (`payments/prod/db.*`).
    pub resources: Vec<Pattern>,
}

/// Why a grant or policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Neither a role nor an action.
    #[error("a grant needs a role or at least one action")]
    NoActions,
    /// No resource, or too many.
    #[error("a grant needs 1 to {MAX_RESOURCES} resource patterns; it has {0}")]
    Resources(usize),
    /// A malformed pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A subject that is not `token:<id>`, `group:<name>` or `anonymous`.
    #[error("subject {0:?} must be token:<16 hex digits>, group:<name> or anonymous")]
    Subject(String),
    /// No subject, or too many.
    #[error("a policy needs 1 to {MAX_SUBJECTS} subjects; it has {0}")]
    Subjects(usize),
    /// A name or description outside its limits.
    #[error("{0}")]
    Text(&'static str),
}

impl GrantBody {
    /// Checks the grant and compiles it.
    pub fn compile(&self) -> Result<Grant, PolicyError> {
        let mut actions = 0u16;
        for a in self
            .role
            .map(Role::actions)
            .unwrap_or(&[])
            .iter()
            .chain(&self.actions)
        {
            actions |= a.bit();
        }
        if actions == 0 {
            return Err(PolicyError::NoActions);
        }
        if self.resources.is_empty() || self.resources.len() > MAX_RESOURCES {
            return Err(PolicyError::Resources(self.resources.len()));
        }
        Ok(Grant {
            actions,
            resources: self.resources.clone(),
        })
    }
}

/// A compiled grant: a set of actions on resource patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    actions: u16,
    resources: Vec<Pattern>,
}

impl Grant {
    /// Whether the grant includes `action`.
    pub fn has(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }

    /// Its resource patterns.
    pub fn resources(&self) -> &[Pattern] {
        &self.resources
    }
}

/// Who a policy binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// One token.
    Token(TokenId),
    /// Every token that carries this group.
    Group(String),
    /// Requests that carry no token.
    Anonymous,
    /// The edge with this id (as its certificate names it), or every edge (`edge:*`): what it
    /// may serve secrets for (`secret-read`).
    Edge(String),
}

impl Subject {
    /// Parses `token:<id>`, `group:<name>`, `edge:<id>`, `edge:*` or `anonymous`.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::Subject(s.chars().take(100).collect());
        if s == "anonymous" {
            return Ok(Self::Anonymous);
        }
        if let Some(id) = s.strip_prefix("token:") {
            return TokenId::parse(id).map(Self::Token).ok_or_else(bad);
        }
        if let Some(e) = s.strip_prefix("edge:")
            && (e == "*" || valid_group(e))
        {
            return Ok(Self::Edge(e.to_owned()));
        }
        if let Some(g) = s.strip_prefix("group:")
            && valid_group(g)
        {
            return Ok(Self::Group(g.to_owned()));
        }
        Err(bad())
    }
}

/// Whether `g` is a group name: 1 to 64 of `[A-Za-z0-9_.:@-]`.
pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= MAX_NAME_BYTES
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
}

/// Whether `name` is a policy name (a key segment: `[a-z0-9][a-z0-9_-]*`, at most 64 bytes).
pub fn valid_policy_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_BYTES
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// A policy as stored (the value of `_meridian/policies/<name>`). Unknown fields are refused
/// by the flattened grant, which receives every field the policy itself does not name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// `token:<id>`, `group:<name>`, `edge:<id>`, `edge:*` or `anonymous`.
    pub subjects: Vec<String>,
    /// What they may do, where.
    #[serde(flatten)]
    pub grant: GrantBody,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PolicyRecord {
    /// Checks the record; its subjects and compiled grant.
    pub fn compile(&self) -> Result<(Vec<Subject>, Grant), PolicyError> {
        if self.subjects.is_empty() || self.subjects.len() > MAX_SUBJECTS {
            return Err(PolicyError::Subjects(self.subjects.len()));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
        {
            return Err(PolicyError::Text("description is longer than 512 bytes"));
        }
        let subjects = self
            .subjects
            .iter()
            .map(|s| Subject::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((subjects, self.grant.compile()?))
    }
}
