//! The compiled flag sets of a published state, one per app/env that has flag records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compile::{FlagSet, compile_namespace};
use super::document::FlagDocument;
use crate::crdt::CacheState;
use crate::model::Delta;

/// Compiled flag sets by `(app, env)`, cheap to clone (each set is shared).
#[derive(Debug, Clone, Default)]
pub struct FlagIndex {
    sets: BTreeMap<String, BTreeMap<String, Arc<FlagSet>>>,
}

impl FlagIndex {
    /// Compiles every namespace of `state` that has flag records.
    pub fn from_state(state: &CacheState) -> Self {
        let mut namespaces = BTreeSet::new();
        for (address, _) in state.iter() {
            if super::is_flag_record(&address.key) {
                namespaces.insert((address.app, address.env));
            }
        }
        let mut index = Self::default();
        index.rebuild(state, namespaces);
        index
    }

    /// The namespaces whose flag records `deltas` change.
    pub fn touched<'d>(deltas: impl IntoIterator<Item = &'d Delta>) -> BTreeSet<(String, String)> {
        deltas
            .into_iter()
            .flat_map(|d| d.changes.iter())
            .filter(|c| super::is_flag_record(&c.address.key))
            .map(|c| (c.address.app.clone(), c.address.env.clone()))
            .collect()
    }

    /// Recompiles `namespaces` from `state` (after their deltas were applied).
    pub fn rebuild(&mut self, state: &CacheState, namespaces: BTreeSet<(String, String)>) {
        for (app, env) in namespaces {
            match state.namespace(&app, &env) {
                Some(ns) if FlagDocument::has_records(ns) => {
                    let set = Arc::new(compile_namespace(ns));
                    self.sets.entry(app).or_default().insert(env, set);
                }
                _ => {
                    if let Some(envs) = self.sets.get_mut(&app) {
                        envs.remove(&env);
                        if envs.is_empty() {
                            self.sets.remove(&app);
                        }
                    }
                }
            }
        }
    }

    /// The flag set of `app/env` (`None`: it never had flags).
    pub fn get(&self, app: &str, env: &str) -> Option<&Arc<FlagSet>> {
        self.sets.get(app)?.get(env)
    }

    /// Every flag set with its app and env.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Arc<FlagSet>)> {
        self.sets
            .iter()
            .flat_map(|(a, envs)| envs.iter().map(move |(e, s)| (a.as_str(), e.as_str(), s)))
    }
}
