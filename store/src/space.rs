//! The free-space guard of a data folder: how many bytes its filesystem has left for us, and
//! whether that is below the reserve a node keeps so that it never fails half-way through a
//! write for want of space.
//!
//! A node checks before it takes on a write (an origin refuses it with 507, an edge applies
//! nothing more) and keeps checking, so that it resumes by itself when space returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The reserve kept free by default: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// The `[storage]` section of a node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Below this many free bytes on the data folder's filesystem the node takes on no more
    /// writes. 0 turns the guard off (writes then fail only when the disk is full).
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// The data folder has too little space left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the data folder {path} has {free_bytes} bytes free, below the reserve of {min_free_bytes} \
     (storage.min_free_bytes); free some space"
)]
pub struct DiskFull {
    /// The data folder.
    pub path: PathBuf,
    /// Bytes free for an unprivileged writer.
    pub free_bytes: u64,
    /// The reserve.
    pub min_free_bytes: u64,
}

/// Watches one data folder; cheap to clone (clones share what the last check saw).
#[derive(Debug, Clone)]
pub struct SpaceGuard {
    path: PathBuf,
    min_free_bytes: u64,
    seen: Arc<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    full: AtomicBool,
    free_bytes: AtomicU64,
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl SpaceGuard {
    /// A guard of `path` keeping `config.min_free_bytes` free.
    pub fn new(path: &Path, config: StorageConfig) -> Self {
        Self {
            path: path.to_owned(),
            min_free_bytes: config.min_free_bytes,
            seen: Arc::default(),
        }
    }

    /// Looks at the filesystem now: `Err` when less than the reserve is free. A folder whose
    /// filesystem cannot be asked counts as having room (the write itself will then say what
    /// is wrong).
    pub fn check(&self) -> Result<(), DiskFull> {
        let free = free_bytes(&self.path).unwrap_or(u64::MAX);
        self.seen.free_bytes.store(free, Ordering::Relaxed);
        let full = free < self.min_free_bytes;
        self.seen.full.store(full, Ordering::Relaxed);
        if full {
            Err(self.full_error(free))
        } else {
            Ok(())
        }
    }

    /// What the last [`SpaceGuard::check`] saw, without looking again.
    pub fn is_full(&self) -> bool {
        self.seen.full.load(Ordering::Relaxed)
    }

    /// The free bytes the last [`SpaceGuard::check`] saw (`u64::MAX` when unknown).
    pub fn free_bytes_seen(&self) -> u64 {
        self.seen.free_bytes.load(Ordering::Relaxed)
    }

    fn full_error(&self, free_bytes: u64) -> DiskFull {
        DiskFull {
            path: self.path.clone(),
            free_bytes,
            min_free_bytes: self.min_free_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_what_is_free_is_full_and_zero_never_is() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0);
        let off = SpaceGuard::new(&dir, StorageConfig { min_free_bytes: 0 });
        assert!(off.check().is_ok());
        assert!(!off.is_full());
        let full = SpaceGuard::new(
            &dir,
            StorageConfig {
                min_free_bytes: u64::MAX,
            },
        );
        let e = full.check().unwrap_err();
        assert!(full.is_full());
        assert_eq!(e.min_free_bytes, u64::MAX);
        assert!(e.to_string().contains("storage.min_free_bytes"), "{e}");
    }
}
