//! Durable signed state shared by origin and edge: a state that only ever moves by a whole,
//! checked revision, persisted in sled (or in memory for tests and the simulator).

pub mod backend;
#[cfg(feature = "sled")]
pub mod durable;
#[cfg(feature = "sled")]
pub mod sled_backend;
#[cfg(feature = "sled")]
pub mod space;
pub mod state;

pub use backend::{Backend, BackendError, MemBackend, Pairs, Write, WriteBack, WriteBackLimits};
#[cfg(feature = "sled")]
pub use durable::DurableDb;
#[cfg(feature = "sled")]
pub use sled_backend::{DetachedView, SledBackend};
#[cfg(feature = "sled")]
pub use space::{DiskFull, SpaceGuard, StorageConfig};
pub use state::{
    EXTRA_PREFIX, EntryLister, PrefixView, Published, Reader, SignedState, StoreError, ValueLookup,
};
