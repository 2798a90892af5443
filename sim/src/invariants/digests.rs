//! Edges at the same revision have equal digests.

use std::collections::BTreeMap;

use meridian_protocol::{Digest, Revision};

/// Records the first digest seen at each revision and checks later ones against it.
#[derive(Debug, Default)]
pub struct SeenDigests(BTreeMap<Revision, Digest>);

impl SeenDigests {
    /// Checks `digest` at `revision`.
    pub fn check(&mut self, revision: Revision, digest: Digest) -> Result<(), String> {
        match self.0.get(&revision) {
            Some(first) if *first != digest => Err(format!(
                "digest {digest} at revision {revision}, another edge had {first}"
            )),
            Some(_) => Ok(()),
            None => {
                self.0.insert(revision, digest);
                Ok(())
            }
        }
    }
}
