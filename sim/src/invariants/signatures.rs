//! Every revision an edge publishes carries an origin-signed head that verifies under the
//! origin's key and signs exactly the edge's digest.

use std::collections::BTreeMap;

use meridian_protocol::{Digest, Revision, SignedHead, TrustedKeys};

/// The checker, remembering heads it already verified (every edge publishes the same heads,
/// and an Ed25519 verification is the most expensive step of a check).
#[derive(Debug, Default)]
pub struct SignatureCheck {
    verified: BTreeMap<Revision, SignedHead>,
}

impl SignatureCheck {
    /// Checks one published revision; `Err` explains the breach.
    pub fn check(
        &mut self,
        trusted: &TrustedKeys,
        head: Option<&SignedHead>,
        digest: Digest,
    ) -> Result<(), String> {
        let head = head.ok_or("published a revision without a signed head")?;
        if self.verified.get(&head.head.revision) != Some(head) {
            trusted
                .verify_head(head)
                .map_err(|e| format!("head does not verify: {e}"))?;
            self.verified.insert(head.head.revision, *head);
        }
        if head.head.digest != digest {
            return Err(format!(
                "state digest {digest} differs from the signed digest {}",
                head.head.digest
            ));
        }
        Ok(())
    }
}
