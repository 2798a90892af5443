//! Nothing uncommitted is applied: every revision an edge publishes was committed by the
//! origin, and the edge's digest there is the origin's.

use std::collections::BTreeMap;

use meridian_protocol::{Digest, Revision};

/// Checks a published revision against the origin's commit record.
pub fn check(
    commits: &BTreeMap<Revision, Digest>,
    revision: Revision,
    digest: Digest,
) -> Result<(), String> {
    if revision == Revision(0) {
        return Ok(());
    }
    match commits.get(&revision) {
        None => Err(format!(
            "published revision {revision}, which the origin never committed"
        )),
        Some(d) if *d != digest => {
            Err(format!("digest at revision {revision} is not the origin's"))
        }
        Some(_) => Ok(()),
    }
}
