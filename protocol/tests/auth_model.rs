//! The policy evaluator agrees with a naive model: a grant allows an action on a resource iff
//! the action is among its role's and listed actions and one of its patterns, read as a glob
//! whose `*` matches any run of characters but `/`, matches the resource's text.
//!
//! A prefix resource `app/env/p` is modelled as the text `app/env/p~`, and "everything" as
//! `~/~/~`: `~` appears in no pattern, so only a `*` can match it, which is exactly "covers
//! every key starting with p" (and "any app, any env, any key").

use meridian_protocol::auth::{Action, GrantBody, Pattern, Principal, Resource, Role};
use proptest::prelude::*;

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "_"]).prop_map(str::to_owned)
}

fn name_pattern() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "_", "*"]).prop_map(str::to_owned)
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["x", "y", "xy"]), 1..4)
        .prop_map(|s| s.join("."))
}

fn key_prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        key(),
        key().prop_map(|k| format!("{k}."))
    ]
}

fn key_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        key(),
        key_prefix().prop_map(|p| format!("{p}*")),
    ]
}

fn pattern() -> impl Strategy<Value = String> {
    (name_pattern(), name_pattern(), key_pattern()).prop_map(|(a, e, k)| format!("{a}/{e}/{k}"))
}

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(Action::ALL.to_vec())
}

#[derive(Debug, Clone)]
struct ModelGrant {
    role: Option<Role>,
    actions: Vec<Action>,
    patterns: Vec<String>,
}

fn grant() -> impl Strategy<Value = ModelGrant> {
    (
        prop::option::of(prop::sample::select(vec![
            Role::Viewer,
            Role::Editor,
            Role::Admin,
        ])),
        prop::collection::vec(action(), 0..3),
        prop::collection::vec(pattern(), 1..4),
    )
        .prop_map(|(role, actions, patterns)| ModelGrant {
            role,
            actions,
            patterns,
        })
}

#[derive(Debug, Clone)]
enum Req {
    Key(String, String, String),
    Prefix(String, String, String),
    Everything,
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        (name(), name(), key()).prop_map(|(a, e, k)| Req::Key(a, e, k)),
        (name(), name(), key_prefix()).prop_map(|(a, e, p)| Req::Prefix(a, e, p)),
        Just(Req::Everything),
    ]
}

fn model(grants: &[ModelGrant], action: Action, req: &Req) -> bool {
    let text = match req {
        Req::Key(a, e, k) => format!("{a}/{e}/{k}"),
        Req::Prefix(a, e, p) => format!("{a}/{e}/{p}~"),
        Req::Everything => "~/~/~".to_owned(),
    };
    grants.iter().any(|g| {
        let has = g.actions.contains(&action)
            || match g.role {
                Some(Role::Viewer) => action == Action::Read,
                Some(Role::Editor) => matches!(
                    action,
                    Action::Read
                        | Action::Write
                        | Action::Delete
                        | Action::Rollback
                        | Action::Schema
                        | Action::Flag
                ),
                Some(Role::Admin) => true,
                None => false,
            };
        has && g
            .patterns
            .iter()
            .any(|p| glob(p.as_bytes(), text.as_bytes()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_evaluator_agrees_with_the_glob_model(
        grants in prop::collection::vec(grant(), 0..4),
        requests in prop::collection::vec((action(), request()), 1..16),
    ) {
        let compiled = grants
            .iter()
            .filter_map(|g| {
                GrantBody {
                    role: g.role,
                    actions: g.actions.clone(),
                    resources: g.patterns.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
                }
                .compile()
                .ok()
            })
            .collect();
        // A grant with no action compiles to nothing, as it grants nothing in the model.
        let principal = Principal::new(None, "p".into(), compiled);
        for (action, req) in &requests {
            let resource = match req {
                Req::Key(a, e, k) => Resource::Key { app: a, env: e, key: k },
                Req::Prefix(a, e, p) => Resource::Prefix { app: a, env: e, prefix: p },
                Req::Everything => Resource::Everything,
            };
            prop_assert_eq!(
                principal.allows(*action, &resource),
                model(&grants, *action, req),
                "{:?} on {:?} with {:?}", action, req, grants
            );
        }
    }
}
