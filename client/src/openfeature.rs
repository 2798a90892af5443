//! An OpenFeature provider for the Rust SDK (`open-feature` crate) over [`LocalFlags`]:
//! every evaluation is local, with flagd's semantics, from the flag set the edge last sent.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let client = meridian_client::Client::with_token("http://127.0.0.1:7081", Some("mrdn_…"))?;
//! let provider = meridian_client::openfeature::MeridianProvider::new(client.flags("shop", "prod").await?);
//! let mut api = open_feature::OpenFeature::singleton_mut().await;
//! api.set_provider(provider).await;
//! let flags = api.create_client();
//! let ctx = open_feature::EvaluationContext::default().with_targeting_key("user-1");
//! let on = flags.get_bool_value("new-checkout", Some(&ctx), None).await.unwrap_or(false);
//! # let _ = on; Ok(()) }
//! ```

use async_trait::async_trait;
use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, FlagMetadata, FlagMetadataValue, StructValue, Value,
};
use serde_json::{Map, Value as Json};

use crate::flags::{Evaluation, LocalFlags};
use meridian_protocol::flags::ErrorCode;

/// The provider: evaluations are answered by [`LocalFlags`].
pub struct MeridianProvider {
    flags: LocalFlags,
    metadata: ProviderMetadata,
}

impl MeridianProvider {
    /// A provider over `flags`.
    pub fn new(flags: LocalFlags) -> Self {
        Self {
            flags,
            metadata: ProviderMetadata::new("meridian"),
        }
    }

    fn evaluate(&self, flag: &str, ctx: &EvaluationContext) -> Evaluation {
        self.flags.evaluate(flag, &context_json(ctx))
    }
}

/// The evaluation context as the JSON object flagd rules read (`targetingKey` plus the
/// custom fields; times as RFC 3339 text).
pub fn context_json(ctx: &EvaluationContext) -> Json {
    let mut o = Map::new();
    for (k, v) in &ctx.custom_fields {
        let v = match v {
            EvaluationContextFieldValue::Bool(b) => Json::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Json::from(*i),
            EvaluationContextFieldValue::Float(f) => Json::from(*f),
            EvaluationContextFieldValue::String(s) => Json::String(s.clone()),
            EvaluationContextFieldValue::DateTime(t) => t
                .format(&time_format())
                .map(Json::String)
                .unwrap_or(Json::Null),
            EvaluationContextFieldValue::Struct(_) => continue,
        };
        o.insert(k.clone(), v);
    }
    if let Some(t) = &ctx.targeting_key {
        o.insert("targetingKey".into(), Json::String(t.clone()));
    }
    Json::Object(o)
}

fn time_format() -> impl time::formatting::Formattable {
    time::format_description::well_known::Rfc3339
}

fn reason(r: &str) -> EvaluationReason {
    match r {
        "STATIC" => EvaluationReason::Static,
        "TARGETING_MATCH" => EvaluationReason::TargetingMatch,
        "DEFAULT" => EvaluationReason::Default,
        "DISABLED" => EvaluationReason::Disabled,
        "ERROR" => EvaluationReason::Error,
        other => EvaluationReason::Other(other.to_owned()),
    }
}

fn error(code: EvaluationErrorCode, message: impl Into<String>) -> EvaluationError {
    EvaluationError {
        code,
        message: Some(message.into()),
    }
}

fn metadata(m: &Map<String, Json>) -> Option<FlagMetadata> {
    if m.is_empty() {
        return None;
    }
    let mut out = FlagMetadata::default();
    for (k, v) in m {
        let v = match v {
            Json::Bool(b) => FlagMetadataValue::Bool(*b),
            Json::Number(n) if n.is_i64() => FlagMetadataValue::Int(n.as_i64().unwrap_or(0)),
            Json::Number(n) => FlagMetadataValue::Float(n.as_f64().unwrap_or(0.0)),
            Json::String(s) => FlagMetadataValue::String(s.clone()),
            _ => continue,
        };
        out = out.with_value(k.clone(), v);
    }
    Some(out)
}

/// A local evaluation as the SDK wants it, the value converted by `convert` (`None`: the
/// variant's value is not of the type asked for).
fn details<T>(
    e: Evaluation,
    convert: impl FnOnce(&Json) -> Option<T>,
) -> EvaluationResult<ResolutionDetails<T>> {
    if let Some(code) = e.error {
        let details = e.error_details.unwrap_or_default();
        return Err(match code {
            ErrorCode::FlagNotFound => error(EvaluationErrorCode::FlagNotFound, details),
            ErrorCode::ParseError => error(EvaluationErrorCode::ParseError, details),
            ErrorCode::TargetingKeyMissing => {
                error(EvaluationErrorCode::TargetingKeyMissing, details)
            }
            ErrorCode::InvalidContext => error(EvaluationErrorCode::InvalidContext, details),
            ErrorCode::General => error(EvaluationErrorCode::General(details.clone()), details),
        });
    }
    let Some(json) = &e.value else {
        // Disabled, or no default variant: the caller's code default applies.
        return Err(error(
            EvaluationErrorCode::General(format!("{} serves the code default", e.key)),
            format!("{}: {}", e.key, e.reason),
        ));
    };
    let Some(value) = convert(json) else {
        return Err(error(
            EvaluationErrorCode::TypeMismatch,
            format!("{} is {json}", e.key),
        ));
    };
    Ok(ResolutionDetails {
        value,
        variant: e.variant,
        reason: Some(reason(e.reason)),
        flag_metadata: metadata(&e.metadata),
    })
}

fn to_value(j: &Json) -> Option<Value> {
    Some(match j {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) if n.is_i64() => Value::Int(n.as_i64()?),
        Json::Number(n) => Value::Float(n.as_f64()?),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_value).collect::<Option<_>>()?),
        Json::Object(o) => {
            let mut s = StructValue::default();
            for (k, v) in o {
                s.add_field(k.clone(), to_value(v)?);
            }
            Value::Struct(s)
        }
        Json::Null => return None,
    })
}

#[async_trait]
impl FeatureProvider for MeridianProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        details(self.evaluate(flag_key, ctx), Json::as_bool)
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        details(self.evaluate(flag_key, ctx), Json::as_i64)
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        details(self.evaluate(flag_key, ctx), Json::as_f64)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        details(self.evaluate(flag_key, ctx), |j| {
            j.as_str().map(str::to_owned)
        })
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        details(self.evaluate(flag_key, ctx), |j| match to_value(j)? {
            Value::Struct(s) => Some(s),
            _ => None,
        })
    }
}
