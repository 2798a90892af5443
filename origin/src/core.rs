//! The origin's deterministic state machine: `apply(command) -> (revision, signed delta)`.
//!
//! Given the same state and command, every node produces the same revision, delta, digest and
//! (Ed25519 being deterministic) signature, so the Raft cluster can drive this unchanged.

use meridian_protocol::{
    Address, Change, Delta, EntryState, JsonText, Revision, SignedDelta, Signer, Version,
};
use meridian_store::{Backend, SignedState, StoreError, Write};

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Set a value.
    Put {
        /// Where.
        address: Address,
        /// Validated JSON text.
        value: JsonText,
        /// Refuse unless the current version is this (0 means "must not exist").
        expect_version: Option<u64>,
    },
    /// Delete a value (leaves a tombstone).
    Delete {
        /// Where.
        address: Address,
        /// Refuse unless the current version is this.
        expect_version: Option<u64>,
    },
}

/// What a committed command produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// The new revision.
    pub revision: Revision,
    /// The address's new state.
    pub entry: EntryState,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `expect_version` did not match.
    #[error("{address}: expected version {expected}, found {actual}")]
    VersionConflict {
        /// The address.
        address: Address,
        /// What the writer expected.
        expected: u64,
        /// What is there (0 when absent).
        actual: u64,
    },
    /// Delete of an absent address.
    #[error("{0} not found")]
    NotFound(Address),
    /// Persisting failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The origin's state plus its signer.
pub struct OriginCore<B: Backend> {
    state: SignedState<B>,
    signer: Signer,
}

impl<B: Backend> OriginCore<B> {
    /// Wraps a loaded state.
    pub fn new(state: SignedState<B>, signer: Signer) -> Self {
        Self { state, signer }
    }

    /// The signed state (for reads, catch-up and snapshots).
    pub fn state(&self) -> &SignedState<B> {
        &self.state
    }

    /// Gives up the state (shutdown, or a crash in the simulator).
    pub fn into_state(self) -> SignedState<B> {
        self.state
    }

    /// The signed state, to publish, flush or install a snapshot.
    pub fn state_mut(&mut self) -> &mut SignedState<B> {
        &mut self.state
    }

    /// Applies one command as one revision, durable and published before it returns.
    pub fn apply(&mut self, command: Command) -> Result<(Applied, SignedDelta), ApplyError> {
        let out = self.apply_unpublished(command, Vec::new())?;
        self.state.publish()?;
        Ok(out)
    }

    /// Applies one command as one revision, persisted with `extra` writes in one batch but
    /// neither flushed nor shown to readers until [`SignedState::publish`]: a batch of commands
    /// costs one flush.
    pub fn apply_unpublished(
        &mut self,
        command: Command,
        extra: Vec<Write>,
    ) -> Result<(Applied, SignedDelta), ApplyError> {
        let (address, value, expect) = match command {
            Command::Put {
                address,
                value,
                expect_version,
            } => (address, Some(value), expect_version),
            Command::Delete {
                address,
                expect_version,
            } => (address, None, expect_version),
        };
        let current = self.state.entry(&address).filter(|e| !e.is_tombstone());
        let previous_version = self.state.entry(&address).map_or(0, |e| e.version.0);
        let actual = current.as_ref().map_or(0, |e| e.version.0);
        if let Some(expected) = expect.filter(|e| *e != actual) {
            return Err(ApplyError::VersionConflict {
                address,
                expected,
                actual,
            });
        }
        if value.is_none() && current.is_none() {
            return Err(ApplyError::NotFound(address));
        }
        let delta = Delta {
            revision: self.state.revision().next(),
            changes: vec![Change {
                address,
                version: Version(previous_version + 1),
                value,
            }],
        };
        let digest = self.state.digest_after(&delta);
        let signed = self.signer.sign_delta(delta, digest);
        self.state.apply_delta_with(&signed, extra)?;
        let entry = signed.delta.entry(&signed.delta.changes[0]);
        Ok((
            Applied {
                revision: signed.delta.revision,
                entry,
            },
            signed,
        ))
    }
}
