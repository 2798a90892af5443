//! Meridian's protocol crate: the data model and address grammar, wire frames, Ed25519-signed
//! heads, the incrementally updatable state digest, and the CRDT merge of the edge cache.
//!
//! It performs no I/O and reads no clock: origin, edge and simulator all build on it.

pub mod addr;
pub mod applied;
pub mod audit;
pub mod auth;
pub mod crdt;
pub mod digest;
pub mod directory;
pub mod flags;
pub mod frame;
pub mod model;
pub mod provenance;
pub mod secrets;
pub mod sign;
pub mod view;

pub use addr::{Address, AddressError};
pub use crdt::CacheState;
pub use digest::{Digest, LtHash};
pub use frame::{Frame, FrameDecoder, FrameError, FrameV1};
pub use model::{Change, Delta, EntryState, Hash32, JsonText, Revision, Version};
pub use sign::{
    Head, KeyId, SignedDelta, SignedHead, Signer, TrustedKeys, VerifiedHeads, VerifyError,
};
