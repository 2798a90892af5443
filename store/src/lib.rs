//! Durable signed state shared by origin and edge: a state that only ever moves by a whole,
//! checked revision, persisted in sled (or in memory for tests and the simulator).

pub mod backend;
pub mod durable;
pub mod space;
pub mod state;

pub use backend::{
    Backend, BackendError, DetachedView, MemBackend, SledBackend, WriteBack, WriteBackLimits,
};
pub use backend::{Pairs, Write};
pub use durable::DurableDb;
pub use space::{DiskFull, SpaceGuard, StorageConfig};
pub use state::{
    EXTRA_PREFIX, EntryLister, PrefixView, Published, Reader, SignedState, StoreError, ValueLookup,
};
