//! Every revision an edge publishes carries an origin-signed head that verifies under the
//! origin's key and signs exactly the edge's digest.

use meridian_protocol::{Digest, SignedHead, TrustedKeys};

/// Checks one published revision; `Err` explains the breach.
pub fn check(
    trusted: &TrustedKeys,
    head: Option<&SignedHead>,
    digest: Digest,
) -> Result<(), String> {
    let head = head.ok_or("published a revision without a signed head")?;
    trusted
        .verify_head(head)
        .map_err(|e| format!("head does not verify: {e}"))?;
    if head.head.digest != digest {
        return Err(format!(
            "state digest {digest} differs from the signed digest {}",
            head.head.digest
        ));
    }
    Ok(())
}
