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
