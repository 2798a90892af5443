//! Applied-config reports: which revision of an app/env a service instance runs.
//!
//! A service tells the edge (or origin) it reads from which revision of `app/env` it has
//! applied (`POST /v1/applied/{app}/{env}`; `meridian-client` does so by itself from its
//! watch). The edge passes the reports on to the origin beside its heartbeat reports
//! ([`crate::FrameV1::Applied`]), and the origin compares them with its history for
//! `GET /v1/drift/{app}/{env}`. Reports are for display and alerts only: nothing is decided
//! from them.

use serde::{Deserialize, Serialize};

use crate::addr::{validate_app, validate_env, validate_key_prefix};

/// Longest instance name accepted.
pub const MAX_INSTANCE_BYTES: usize = 128;
/// Longest reporter (actor) name carried.
pub const MAX_REPORTER_BYTES: usize = 160;
/// Most reports one [`crate::FrameV1::Applied`] carries.
pub const MAX_APPLIED_PER_FRAME: usize = 1000;

/// One instance's report, as relayed to the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    /// The application.
    pub app: String,
    /// The environment.
    pub env: String,
    /// The key prefix the instance watches (empty: every key).
    pub prefix: String,
    /// The instance's name, unique among the instances of the app/env (a host or pod name).
    pub instance: String,
    /// The revision it applied.
    pub revision: u64,
    /// Who reported it: the token's actor (`name#id`).
    pub reporter: String,
    /// When it was reported, ms since the Unix epoch on the receiving node's clock.
    pub at_ms: u64,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppliedError {
    /// The app, env or prefix is not a valid name.
    #[error("{0}")]
    Address(#[from] crate::AddressError),
    /// The instance name is empty, too long or not printable.
    #[error("instance must be 1 to {MAX_INSTANCE_BYTES} printable ASCII characters without spaces")]
    Instance,
    /// The reporter's name is too long.
    #[error("reporter is longer than {MAX_REPORTER_BYTES} bytes")]
    Reporter,
}

/// Whether `instance` is a name an instance may report under.
pub fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= MAX_INSTANCE_BYTES
        && instance.bytes().all(|b| b.is_ascii_graphic())
}

impl AppliedReport {
    /// Checks every field's bounds (an origin checks what an edge relays, too).
    pub fn validate(&self) -> Result<(), AppliedError> {
        validate_app(&self.app)?;
        validate_env(&self.env)?;
        validate_key_prefix(&self.prefix)?;
        if !valid_instance(&self.instance) {
            return Err(AppliedError::Instance);
        }
        if self.reporter.len() > MAX_REPORTER_BYTES {
            return Err(AppliedError::Reporter);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AppliedReport {
        AppliedReport {
            app: "payments".into(),
            env: "prod".into(),
            prefix: String::new(),
            instance: "pod-7f9c".into(),
            revision: 42,
            reporter: "svc#3".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn reports_are_checked_field_by_field() {
        assert_eq!(report().validate(), Ok(()));
        for bad in [
            AppliedReport {
                instance: String::new(),
                ..report()
            },
            AppliedReport {
                instance: "has space".into(),
                ..report()
            },
            AppliedReport {
                instance: "x".repeat(MAX_INSTANCE_BYTES + 1),
                ..report()
            },
            AppliedReport {
                app: "Bad App".into(),
                ..report()
            },
            AppliedReport {
                prefix: "..".into(),
                ..report()
            },
            AppliedReport {
                reporter: "r".repeat(MAX_REPORTER_BYTES + 1),
                ..report()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(
            AppliedReport {
                instance: "x".repeat(MAX_INSTANCE_BYTES),
                ..report()
            }
            .validate()
            .is_ok()
        );
    }
}
