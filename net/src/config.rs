//! The error every role's `validate()` returns: the offending config key and what is wrong,
//! with the limit.

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong, with the limit.
    pub problem: String,
}

/// `Ok` when `ok`, else a [`ConfigError`] naming `key`.
pub fn check(ok: bool, key: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            problem: problem.into(),
        })
    }
}

/// Checks a pair of place limits (see [`crate::slots::Slots`]): `total` between 1 and
/// 1,000,000, `per_client` between 1 and `total`, naming the offending key.
pub fn check_places(
    total: (&'static str, usize),
    per_client: (&'static str, usize),
) -> Result<(), ConfigError> {
    let ((total_key, total), (per_key, per)) = (total, per_client);
    check(
        (1..=1_000_000).contains(&total),
        total_key,
        format!("must be between 1 and 1000000, got {total}"),
    )?;
    check(
        (1..=total).contains(&per),
        per_key,
        format!("must be between 1 and {total_key} ({total}), got {per}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_limits_out_of_range_name_their_key_and_bound() {
        assert!(check_places(("a.max", 10), ("a.per", 10)).is_ok());
        let e = check_places(("a.max", 0), ("a.per", 1)).unwrap_err();
        assert_eq!(e.key, "a.max");
        let e = check_places(("a.max", 10), ("a.per", 11)).unwrap_err();
        assert_eq!(e.key, "a.per");
        assert!(e.problem.contains("a.max (10)"), "{e}");
        let e = check_places(("a.max", 10), ("a.per", 0)).unwrap_err();
        assert_eq!(e.key, "a.per");
    }
}
