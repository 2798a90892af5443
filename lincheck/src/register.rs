//! The sequential model of one key of a key-value store: put, delete and get.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use crate::Model;

/// A key that holds a value of type `V` or nothing; values are compared as they are.
#[derive(Debug, Clone, Copy)]
pub struct Register<V>(PhantomData<fn() -> V>);

impl<V> Register<V> {
    /// The model.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<V> Default for Register<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A call on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterInput<V> {
    /// Store a value.
    Put(V),
    /// Remove the value.
    Delete,
    /// Read the value.
    Get,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutput<V> {
    /// The put was stored.
    Stored,
    /// The delete removed a value.
    Deleted,
    /// The key held nothing (a delete or a get).
    NotFound,
    /// A get read this value.
    Value(V),
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type State = Option<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Option<V> {
        None
    }

    fn step(
        &self,
        state: &Option<V>,
        input: &RegisterInput<V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<Option<V>> {
        use RegisterOutput as O;
        match (input, output) {
            (RegisterInput::Put(v), None | Some(O::Stored)) => Some(Some(v.clone())),
            (RegisterInput::Delete, None) => Some(None),
            (RegisterInput::Delete, Some(O::Deleted)) => state.is_some().then_some(None),
            (RegisterInput::Delete | RegisterInput::Get, Some(O::NotFound)) => {
                state.is_none().then_some(None)
            }
            (RegisterInput::Get, None) => Some(state.clone()),
            (RegisterInput::Get, Some(O::Value(v))) => {
                (state.as_ref() == Some(v)).then(|| state.clone())
            }
            _ => None,
        }
    }
}
