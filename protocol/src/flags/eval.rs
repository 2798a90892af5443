//! Evaluating a compiled flag against a context, with flagd's semantics: the context gains
//! `$flagd.flagKey` and `$flagd.timestamp`; a rule's string (or boolean) result names the
//! variant, `null` falls back to the default variant; a disabled flag answers DISABLED; every
//! failure is an OpenFeature error code, never a panic.

use std::fmt::Write as _;

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::bumpalo::collections::Vec as BumpVec;
use datalogic_rs::datavalue::NumberValue;
use datalogic_rs::{DataValue, Logic};

use super::compile::{CompiledFlag, ENGINE, FlagSet};

/// Why a flag resolved to its value (OpenFeature's resolution reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting chose the variant.
    TargetingMatch,
    /// Targeting did not decide: the default variant.
    Default,
    /// The flag is disabled: the caller's code default.
    Disabled,
    /// Evaluation failed: the caller's code default.
    Error,
}

impl Reason {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Default => "DEFAULT",
            Self::Disabled => "DISABLED",
            Self::Error => "ERROR",
        }
    }
}

/// OpenFeature's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No flag with that key.
    FlagNotFound,
    /// The stored definition could not be compiled.
    ParseError,
    /// The rule buckets by targeting key and the context has none.
    TargetingKeyMissing,
    /// The context is not a JSON object, or its `targetingKey` is not a string.
    InvalidContext,
    /// The rule failed or named no variant of the flag.
    General,
}

impl ErrorCode {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlagNotFound => "FLAG_NOT_FOUND",
            Self::ParseError => "PARSE_ERROR",
            Self::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            Self::InvalidContext => "INVALID_CONTEXT",
            Self::General => "GENERAL",
        }
    }
}

/// What one evaluation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'f> {
    /// A value: `variant` names it, or `None` for the caller's code default.
    Resolved {
        /// The chosen variant.
        variant: Option<&'f str>,
        /// Why.
        reason: Reason,
    },
    /// A failure; the caller uses its code default.
    Failed {
        /// Which failure.
        code: ErrorCode,
        /// A message for people.
        details: String,
    },
}

/// The answer for one flag.
#[derive(Debug, Clone)]
pub struct Resolution<'f> {
    /// The flag key asked for.
    pub key: &'f str,
    /// The flag, when it exists.
    pub flag: Option<&'f CompiledFlag>,
    /// What the evaluation came to.
    pub outcome: Outcome<'f>,
}

impl Resolution<'_> {
    /// The resolved value, if any.
    pub fn value(&self) -> Option<&serde_json::Value> {
        match (&self.outcome, self.flag) {
            (
                Outcome::Resolved {
                    variant: Some(v), ..
                },
                Some(flag),
            ) => flag.variants.get(*v).map(|v| &v.value),
            _ => None,
        }
    }

    /// The variant served, if any.
    pub fn variant(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Resolved { variant, .. } => *variant,
            Outcome::Failed { .. } => None,
        }
    }

    /// The error code, if the evaluation failed.
    pub fn error(&self) -> Option<ErrorCode> {
        match &self.outcome {
            Outcome::Failed { code, .. } => Some(*code),
            Outcome::Resolved { .. } => None,
        }
    }

    /// Appends the OFREP body of this answer (`evaluationSuccess`, `evaluationFailure` or
    /// `flagNotFound`) to `out`.
    pub fn write_ofrep(&self, out: &mut String) {
        out.push_str("{\"key\":");
        push_json_str(out, self.key);
        match &self.outcome {
            Outcome::Resolved { variant, reason } => {
                out.push_str(",\"reason\":\"");
                out.push_str(reason.as_str());
                out.push('"');
                if let (Some(name), Some(flag)) = (variant, self.flag)
                    && let Some(v) = flag.variants.get(*name)
                {
                    out.push_str(",\"variant\":");
                    push_json_str(out, name);
                    out.push_str(",\"value\":");
                    out.push_str(&v.json);
                }
            }
            Outcome::Failed { code, details } => {
                out.push_str(",\"errorCode\":\"");
                out.push_str(code.as_str());
                out.push_str("\",\"errorDetails\":");
                push_json_str(out, details);
            }
        }
        if let Some(flag) = self.flag
            && !flag.metadata_json.is_empty()
        {
            out.push_str(",\"metadata\":");
            out.push_str(&flag.metadata_json);
        }
        out.push('}');
    }
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{}", serde_json::Value::from(s));
    }
}

/// Why an evaluation request's context was refused (OFREP answers 400 INVALID_CONTEXT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The body is not JSON.
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    /// The body or its `context` is not an object.
    #[error("the evaluation context must be a JSON object")]
    NotObject,
    /// `targetingKey` is present but not a string.
    #[error("targetingKey must be a string")]
    TargetingKey,
}

/// A parsed evaluation context, shared by every flag of one request.
pub struct EvalContext<'a> {
    arena: &'a Bump,
    pairs: &'a [(&'a str, DataValue<'a>)],
    has_targeting_key: bool,
    now_s: i64,
}

impl<'a> EvalContext<'a> {
    /// Parses an OFREP request body `{"context": {…}}` (a missing `context` is an empty one)
    /// into `arena`. `now_s` is `$flagd.timestamp`, Unix seconds.
    pub fn parse_request(body: &'a str, arena: &'a Bump, now_s: i64) -> Result<Self, ContextError> {
        let root = if body.trim().is_empty() {
            DataValue::Object(&[])
        } else {
            DataValue::from_str(body, arena).map_err(|e| ContextError::NotJson(e.to_string()))?
        };
        let DataValue::Object(fields) = root else {
            return Err(ContextError::NotObject);
        };
        let context = fields
            .iter()
            .find(|(k, _)| *k == "context")
            .map(|(_, v)| v)
            .unwrap_or(&DataValue::Null);
        match context {
            DataValue::Null => Self::from_pairs(&[], arena, now_s),
            DataValue::Object(pairs) => Self::from_pairs(pairs, arena, now_s),
            _ => Err(ContextError::NotObject),
        }
    }

    /// Parses a bare context object.
    pub fn parse_context(
        context: &'a str,
        arena: &'a Bump,
        now_s: i64,
    ) -> Result<Self, ContextError> {
        match DataValue::from_str(context, arena)
            .map_err(|e| ContextError::NotJson(e.to_string()))?
        {
            DataValue::Object(pairs) => Self::from_pairs(pairs, arena, now_s),
            _ => Err(ContextError::NotObject),
        }
    }

    fn from_pairs(
        pairs: &'a [(&'a str, DataValue<'a>)],
        arena: &'a Bump,
        now_s: i64,
    ) -> Result<Self, ContextError> {
        let mut has_targeting_key = false;
        // flagd reserves `$flagd`: a caller's own is replaced, never merged.
        let pairs: &'a [(&'a str, DataValue<'a>)] = if pairs.iter().any(|(k, _)| *k == "$flagd") {
            let mut kept = BumpVec::with_capacity_in(pairs.len(), arena);
            kept.extend(pairs.iter().filter(|(k, _)| *k != "$flagd").cloned());
            kept.into_bump_slice()
        } else {
            pairs
        };
        for (k, v) in pairs {
            if *k == "targetingKey" {
                match v {
                    DataValue::String(s) => has_targeting_key = !s.is_empty(),
                    DataValue::Null => {}
                    _ => return Err(ContextError::TargetingKey),
                }
            }
        }
        Ok(Self {
            arena,
            pairs,
            has_targeting_key,
            now_s,
        })
    }

    /// Evaluates flag `key` of `set`.
    pub fn evaluate<'f>(&self, set: &'f FlagSet, key: &'f str) -> Resolution<'f>
    where
        'f: 'a,
    {
        match set.flags.get(key) {
            Some(flag) => self.evaluate_flag(flag),
            None => Resolution {
                key,
                flag: None,
                outcome: Outcome::Failed {
                    code: ErrorCode::FlagNotFound,
                    details: format!("flag {key:?} was not found"),
                },
            },
        }
    }

    /// Evaluates one compiled flag.
    pub fn evaluate_flag<'f>(&self, flag: &'f CompiledFlag) -> Resolution<'f>
    where
        'f: 'a,
    {
        let outcome = self.outcome(flag);
        Resolution {
            key: &flag.key,
            flag: Some(flag),
            outcome,
        }
    }

    fn outcome<'f>(&self, flag: &'f CompiledFlag) -> Outcome<'f>
    where
        'f: 'a,
    {
        if let Some(why) = &flag.broken {
            return Outcome::Failed {
                code: ErrorCode::ParseError,
                details: why.clone(),
            };
        }
        if !flag.enabled {
            return Outcome::Resolved {
                variant: None,
                reason: Reason::Disabled,
            };
        }
        let default = || Outcome::Resolved {
            variant: flag.default_variant.as_deref(),
            reason: Reason::Default,
        };
        let Some(rule) = &flag.targeting else {
            return Outcome::Resolved {
                variant: flag.default_variant.as_deref(),
                reason: if flag.default_variant.is_some() {
                    Reason::Static
                } else {
                    Reason::Default
                },
            };
        };
        let result = match self.run(rule, &flag.key) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    code: ErrorCode::General,
                    details: format!("targeting failed: {e}"),
                };
            }
        };
        let name: &str = match result {
            DataValue::Null if flag.implicit_bucketing && !self.has_targeting_key => {
                return Outcome::Failed {
                    code: ErrorCode::TargetingKeyMissing,
                    details: "the flag buckets by targetingKey and the context has none".into(),
                };
            }
            DataValue::Null => return default(),
            DataValue::String(s) => s,
            DataValue::Bool(true) => "true",
            DataValue::Bool(false) => "false",
            other => {
                return Outcome::Failed {
                    code: ErrorCode::General,
                    details: format!("targeting returned {other}, not a variant name"),
                };
            }
        };
        match flag.variants.get_key_value(name) {
            Some((name, _)) => Outcome::Resolved {
                variant: Some(name),
                reason: Reason::TargetingMatch,
            },
            None => Outcome::Failed {
                code: ErrorCode::General,
                details: format!(
                    "targeting returned variant {name:?}, which the flag does not have"
                ),
            },
        }
    }

    fn run(
        &self,
        rule: &'a Logic,
        flag_key: &'a str,
    ) -> Result<&'a DataValue<'a>, datalogic_rs::Error> {
        let arena = self.arena;
        let flagd: &'a [(&'a str, DataValue<'a>)] = arena.alloc_slice_copy(&[
            ("flagKey", DataValue::String(flag_key)),
            (
                "timestamp",
                DataValue::Number(NumberValue::from_i64(self.now_s)),
            ),
        ]);
        let mut root = BumpVec::with_capacity_in(self.pairs.len() + 1, arena);
        root.extend(self.pairs.iter().cloned());
        root.push(("$flagd", DataValue::Object(flagd)));
        ENGINE.evaluate(rule, DataValue::Object(root.into_bump_slice()), arena)
    }
}
