//! After the final heal every edge reaches the newest committed revision, with its digest.

use meridian_protocol::{Digest, Revision};

/// Checks one edge at the end of the run.
pub fn check(newest: (Revision, Digest), edge: (Revision, Digest)) -> Result<(), String> {
    if edge.0 != newest.0 {
        return Err(format!(
            "ended at revision {}, the newest is {}",
            edge.0, newest.0
        ));
    }
    if edge.1 != newest.1 {
        return Err(format!(
            "digest at revision {} differs from the origin's",
            edge.0
        ));
    }
    Ok(())
}
