//! An edge's published revision never decreases, including across crashes and restarts.

use meridian_protocol::Revision;

/// Checks a newly published revision against the highest one the edge ever served.
pub fn check(highest_served: Revision, now_serving: Revision) -> Result<(), String> {
    if now_serving < highest_served {
        return Err(format!(
            "served revision {now_serving} after having served {highest_served}"
        ));
    }
    Ok(())
}
