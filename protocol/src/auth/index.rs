//! The index a node builds from the replicated token and policy records, and the decisions it
//! answers: who a bearer token is ([`AuthIndex::authenticate`]) and whether that principal may
//! perform an action on a resource ([`Principal::allows`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::crdt::CacheState;

use super::policy::{Action, Grant, PolicyRecord, Role, Subject};
use super::token::{TokenError, TokenId, TokenRecord, parse_token};
use super::{POLICIES_ENV, SYSTEM_APP, TOKENS_ENV};
use crate::auth::{GrantBody, Pattern};

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// One key.
    Key {
        /// App.
        app: &'a str,
        /// Env.
        env: &'a str,
        /// Key.
        key: &'a str,
    },
    /// Every key of a namespace starting with a prefix (`""`: the whole namespace).
    Prefix {
        /// App.
        app: &'a str,
        /// Env.
        env: &'a str,
        /// Key prefix.
        prefix: &'a str,
    },
    /// Everything (tokens, policies, the audit log).
    Everything,
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key { app, env, key } => write!(f, "{app}/{env}/{key}"),
            Self::Prefix { app, env, prefix } => write!(f, "{app}/{env}/{prefix}*"),
            Self::Everything => f.write_str("*/*/*"),
        }
    }
}

/// An authenticated caller (or the anonymous one) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `None` for a request without a token.
    pub id: Option<TokenId>,
    /// The token's name (`anonymous` without one).
    pub name: String,
    /// Every grant: the token's own and those of the policies binding it or its groups.
    grants: Vec<Grant>,
}

impl Principal {
    /// A principal with these grants.
    pub fn new(id: Option<TokenId>, name: String, grants: Vec<Grant>) -> Self {
        Self { id, name, grants }
    }

    /// The caller without a token and without any grant.
    pub fn nobody() -> Self {
        Self::new(None, "anonymous".into(), Vec::new())
    }

    /// How history and the audit log name the principal: `name#id`, or `anonymous`.
    pub fn actor(&self) -> String {
        match self.id {
            Some(id) => format!("{}#{id}", self.name),
            None => self.name.clone(),
        }
    }

    /// Whether the request carried no token.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_none()
    }

    /// The one authorization decision: whether some grant includes `action` and covers
    /// `resource`.
    pub fn allows(&self, action: Action, resource: &Resource<'_>) -> bool {
        self.grants.iter().any(|g| {
            g.has(action)
                && g.resources().iter().any(|p| match *resource {
                    Resource::Key { app, env, key } => p.matches_key(app, env, key),
                    Resource::Prefix { app, env, prefix } => p.covers_prefix(app, env, prefix),
                    Resource::Everything => p.is_everything(),
                })
        })
    }

    /// Whether the principal may perform `action` on some key of `app/env` (a pre-filter; each
    /// key is still checked with [`Principal::allows`]).
    pub fn may_act_in(&self, action: Action, app: &str, env: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.has(action) && g.resources().iter().any(|p| p.matches_namespace(app, env)))
    }

    /// The one app/env in which every grant of `action` lies, if there is exactly one: how a
    /// service token scoped to one namespace is served on routes that name none (OFREP's bare
    /// `/ofrep/v1/...`).
    pub fn only_namespace(&self, action: Action) -> Option<(&str, &str)> {
        let mut only = None;
        for g in self.grants.iter().filter(|g| g.has(action)) {
            for p in g.resources() {
                let ns = p.exact_namespace()?;
                if only.is_some_and(|o| o != ns) {
                    return None;
                }
                only = Some(ns);
            }
        }
        only
    }

    /// Whether the principal holds any grant at all.
    pub fn has_grants(&self) -> bool {
        !self.grants.is_empty()
    }
}

/// Why a presented token was not accepted (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a token at all.
    #[error(transparent)]
    Malformed(#[from] TokenError),
    /// Well formed, but no such token: never issued, or revoked.
    #[error("unknown or revoked token {0}")]
    Unknown(TokenId),
    /// The token's expiry has passed.
    #[error("token {0} expired")]
    Expired(TokenId),
}

#[derive(Debug, Clone)]
struct TokenEntry {
    hash: [u8; 32],
    expires_ms: Option<u64>,
    principal: Arc<Principal>,
}

/// Tokens and policies of one state, indexed for per-request decisions.
#[derive(Debug, Clone)]
pub struct AuthIndex {
    tokens: HashMap<TokenId, TokenEntry>,
    /// Ids with a record, revoked ones included.
    recorded: HashSet<TokenId>,
    anonymous: Arc<Principal>,
    /// Grants bound to edges, by edge id (`*`: every edge).
    edges: HashMap<String, Vec<Grant>>,
    /// Records that did not parse (counted, never fatal: the rest still works).
    invalid_records: usize,
}

impl Default for AuthIndex {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            recorded: HashSet::new(),
            anonymous: Arc::new(Principal::nobody()),
            edges: HashMap::new(),
            invalid_records: 0,
        }
    }
}

impl AuthIndex {
    /// Builds the index from the token and policy records of `state`.
    pub fn from_state(state: &CacheState) -> Self {
        let empty = BTreeMap::new();
        let tokens = state.namespace(SYSTEM_APP, TOKENS_ENV).unwrap_or(&empty);
        let policies = state.namespace(SYSTEM_APP, POLICIES_ENV).unwrap_or(&empty);
        let mut invalid = 0;
        let mut by_subject: HashMap<Subject, Vec<Grant>> = HashMap::new();
        for entry in policies.values() {
            let Some(text) = &entry.value else { continue };
            match serde_json::from_str::<PolicyRecord>(text)
                .ok()
                .and_then(|p| p.compile().ok())
            {
                Some((subjects, grant)) => {
                    for s in subjects {
                        by_subject.entry(s).or_default().push(grant.clone());
                    }
                }
                None => invalid += 1,
            }
        }
        let mut index = Self::default();
        for (key, entry) in tokens {
            let Some(id) = TokenId::parse(key) else {
                invalid += 1;
                continue;
            };
            index.recorded.insert(id);
            let Some(text) = &entry.value else { continue };
            let Some((record, hash)) = serde_json::from_str::<TokenRecord>(text)
                .ok()
                .filter(|r| r.validate().is_ok())
                .and_then(|r| r.hash_bytes().map(|h| (r, h)))
                .filter(|(_, h)| TokenId::of(h) == id)
            else {
                invalid += 1;
                continue;
            };
            let mut grants: Vec<Grant> = record
                .grants
                .iter()
                .filter_map(|g| g.compile().ok())
                .collect();
            grants.extend(
                by_subject
                    .get(&Subject::Token(id))
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            for g in &record.groups {
                grants.extend(
                    by_subject
                        .get(&Subject::Group(g.clone()))
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
            let principal = Arc::new(Principal::new(Some(id), record.name, grants));
            index.tokens.insert(
                id,
                TokenEntry {
                    hash,
                    expires_ms: record.expires_ms,
                    principal,
                },
            );
        }
        let anonymous = by_subject.remove(&Subject::Anonymous).unwrap_or_default();
        for (subject, grants) in by_subject {
            if let Subject::Edge(id) = subject {
                index.edges.insert(id, grants);
            }
        }
        index.anonymous = Arc::new(Principal::new(None, "anonymous".into(), anonymous));
        index.invalid_records = invalid;
        index
    }

    /// What the edge `edge_id` may do: the grants of policies naming `edge:<edge_id>` or
    /// `edge:*` (the origin sends an edge data keys only where it may `secret-read`).
    pub fn edge(&self, edge_id: &str) -> Principal {
        let grants = [edge_id, "*"]
            .iter()
            .filter_map(|id| self.edges.get(*id))
            .flatten()
            .cloned()
            .collect();
        Principal::new(None, format!("edge:{edge_id}"), grants)
    }

    /// Who presents `bearer` (`None`: no token, the anonymous principal) at `now_ms`.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        now_ms: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        let Some(text) = bearer else {
            return Ok(self.anonymous.clone());
        };
        let hash = parse_token(text)?;
        let id = TokenId::of(&hash);
        let entry = self
            .tokens
            .get(&id)
            .filter(|e| e.hash == hash)
            .ok_or(AuthError::Unknown(id))?;
        if entry.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(AuthError::Expired(id));
        }
        Ok(entry.principal.clone())
    }

    /// Whether a record (live or revoked) exists for `id`.
    pub fn has_record(&self, id: TokenId) -> bool {
        self.recorded.contains(&id)
    }

    /// Accepts the token with `hash` as an admin named `name` while the state holds no record
    /// of it (the bootstrap token, until its record commits).
    pub fn add_bootstrap(&mut self, hash: [u8; 32], name: &str) {
        let id = TokenId::of(&hash);
        if self.has_record(id) {
            return;
        }
        let grant = GrantBody {
            role: Some(Role::Admin),
            actions: Vec::new(),
            resources: vec![Pattern::everything()],
        };
        let grants = grant.compile().into_iter().collect();
        self.tokens.insert(
            id,
            TokenEntry {
                hash,
                expires_ms: None,
                principal: Arc::new(Principal::new(Some(id), name.to_owned(), grants)),
            },
        );
    }

    /// How many live tokens the index holds.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// How many stored records did not parse or check (skipped).
    pub fn invalid_records(&self) -> usize {
        self.invalid_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_string;
    use crate::{Address, EntryState, Version};

    fn put(state: &mut CacheState, env: &str, key: &str, value: Option<serde_json::Value>) {
        let revision = state.revision().next();
        state.merge_entry(
            &Address::system(env, key).unwrap(),
            EntryState {
                version: Version(1),
                revision,
                value: value.map(|v| v.to_string().into()),
            },
        );
        assert_eq!(state.revision(), revision);
    }

    fn token(state: &mut CacheState, seed: u8, record: serde_json::Value) -> String {
        let text = token_string(&[seed; 32]);
        let hash = parse_token(&text).unwrap();
        let mut record = record;
        record["hash"] = hex::encode(hash).into();
        put(
            state,
            TOKENS_ENV,
            &TokenId::of(&hash).to_string(),
            Some(record),
        );
        text
    }

    #[test]
    fn tokens_groups_policies_revocation_and_expiry() {
        let mut s = CacheState::new();
        let base = |name: &str| serde_json::json!({"hash": "", "name": name, "owner": "ops", "created_ms": 1});
        let mut viewer = base("svc");
        viewer["grants"] =
            serde_json::json!([{"role": "viewer", "resources": ["payments/prod/*"]}]);
        let svc = token(&mut s, 1, viewer);
        let mut grouped = base("alice");
        grouped["groups"] = serde_json::json!(["ops"]);
        grouped["expires_ms"] = 1000.into();
        let alice = token(&mut s, 2, grouped);
        put(
            &mut s,
            POLICIES_ENV,
            "ops-edit",
            Some(
                serde_json::json!({"subjects": ["group:ops"], "role": "editor", "resources": ["*/staging/*"]}),
            ),
        );
        put(
            &mut s,
            POLICIES_ENV,
            "public",
            Some(
                serde_json::json!({"subjects": ["anonymous"], "actions": ["read"], "resources": ["web/_/public.*"]}),
            ),
        );
        let revoked = token(&mut s, 3, base("old"));
        let hash = parse_token(&revoked).unwrap();
        put(&mut s, TOKENS_ENV, &TokenId::of(&hash).to_string(), None);
        let index = AuthIndex::from_state(&s);
        assert_eq!((index.token_count(), index.invalid_records()), (2, 0));

        let key = |app, env, key| Resource::Key { app, env, key };
        let p = index.authenticate(Some(&svc), 5).unwrap();
        assert!(p.allows(Action::Read, &key("payments", "prod", "db.url")));
        assert!(!p.allows(Action::Write, &key("payments", "prod", "db.url")));
        assert!(!p.allows(Action::Read, &key("payments", "staging", "db.url")));
        assert_eq!(p.actor(), format!("svc#{}", p.id.unwrap()));

        let a = index.authenticate(Some(&alice), 999).unwrap();
        assert!(a.allows(Action::Write, &key("any", "staging", "x")));
        assert!(!a.allows(Action::Admin, &Resource::Everything));
        assert!(matches!(
            index.authenticate(Some(&alice), 1000),
            Err(AuthError::Expired(_))
        ));
        assert!(matches!(
            index.authenticate(Some(&revoked), 5),
            Err(AuthError::Unknown(_))
        ));
        assert!(index.has_record(TokenId::of(&hash)));
        assert!(matches!(
            index.authenticate(Some("Bearer x"), 5),
            Err(AuthError::Malformed(_))
        ));
        // A well-formed token that was never issued.
        let stranger = token_string(&[9; 32]);
        assert!(matches!(
            index.authenticate(Some(&stranger), 5),
            Err(AuthError::Unknown(_))
        ));

        let anon = index.authenticate(None, 5).unwrap();
        assert!(anon.is_anonymous());
        assert!(anon.allows(Action::Read, &key("web", "_", "public.banner")));
        assert!(!anon.allows(Action::Read, &key("web", "_", "private")));

        let mut with_boot = AuthIndex::from_state(&s);
        with_boot.add_bootstrap(parse_token(&stranger).unwrap(), "bootstrap");
        let boot = with_boot.authenticate(Some(&stranger), 5).unwrap();
        assert!(boot.allows(Action::Admin, &Resource::Everything));
        // A revoked token cannot come back as a bootstrap token.
        with_boot.add_bootstrap(hash, "bootstrap");
        assert!(with_boot.authenticate(Some(&revoked), 5).is_err());
    }
}
