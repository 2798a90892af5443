//! Local flag evaluation: the flag set of one app/env, loaded from an edge, kept current by a
//! watch, and evaluated in this process with the same evaluator the edges run
//! (`meridian_protocol::flags`), so a flag costs no network round trip and keeps answering
//! from the last set it had while the edge is unreachable.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use meridian_protocol::flags::{
    Bump, CompileError, ErrorCode, EvalContext, FlagDocument, FlagSet, Outcome, Reason,
    compile_document, is_flag_record,
};
use serde_json::Value;

use crate::{Client, ClientError, WatchEvent};

/// What one local evaluation came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The flag key.
    pub key: String,
    /// The value served; `None` means the caller's code default.
    pub value: Option<Value>,
    /// The variant served.
    pub variant: Option<String>,
    /// Why (`STATIC`, `TARGETING_MATCH`, `DEFAULT`, `DISABLED`, `ERROR`).
    pub reason: &'static str,
    /// The OpenFeature error code, when it failed.
    pub error: Option<ErrorCode>,
    /// The failure, for people.
    pub error_details: Option<String>,
    /// Flag metadata (flag-set metadata under the flag's own).
    pub metadata: serde_json::Map<String, Value>,
}

/// The flags of one app/env, evaluated locally. Cheap to clone; every clone sees updates.
#[derive(Clone)]
pub struct LocalFlags {
    set: Arc<RwLock<Arc<FlagSet>>>,
    task: Arc<tokio::task::AbortHandle>,
}

impl Drop for LocalFlags {
    fn drop(&mut self) {
        // The last handle stops the watch.
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn load(client: &Client, app: &str, env: &str) -> Result<(FlagSet, u64), ClientError> {
    let url = format!("{}/v1/flags/{app}/{env}", client.endpoint);
    let answer = client
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let status = answer.status().as_u16();
    let revision = answer
        .headers()
        .get("meridian-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: Value = answer
        .json()
        .await
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    if status != 200 {
        return Err(crate::api_error(status, &body, revision));
    }
    let document: FlagDocument =
        serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    let set = compile_document(&document)
        .map_err(|e: CompileError| ClientError::Decode(e.to_string()))?;
    Ok((set, revision.unwrap_or(0)))
}

impl Client {
    /// Loads the flags of `app/env` from the edge and keeps them current with a watch (the set
    /// is fetched again whenever one of its records changes). Fails if the first load does.
    pub async fn flags(&self, app: &str, env: &str) -> Result<LocalFlags, ClientError> {
        let (set, revision) = load(self, app, env).await?;
        let shared = Arc::new(RwLock::new(Arc::new(set)));
        let (client, app, env, target) =
            (self.clone(), app.to_owned(), env.to_owned(), shared.clone());
        let task = tokio::spawn(async move {
            let mut events =
                std::pin::pin!(client.watch(&app, &env, "", Some(revision.to_string())));
            while let Some(event) = events.next().await {
                let reload = match &event {
                    Ok(WatchEvent::Change {
                        app: a,
                        env: e,
                        key,
                        ..
                    }) => *a == app && *e == env && is_flag_record(key),
                    Ok(WatchEvent::Resync { .. }) => true,
                    Err(_) => false,
                };
                if !reload {
                    continue;
                }
                // A failed reload keeps the set it had; the next change tries again.
                for attempt in 0..5u32 {
                    match load(&client, &app, &env).await {
                        Ok((set, _)) => {
                            *target.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "reloading flags failed");
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
            }
        });
        Ok(LocalFlags {
            set: shared,
            task: Arc::new(task.abort_handle()),
        })
    }
}

impl LocalFlags {
    /// The compiled set now.
    pub fn set(&self) -> Arc<FlagSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Evaluates `flag` for `context` (a JSON object, `targetingKey` among its fields), with
    /// `$flagd.timestamp` from this machine's clock.
    pub fn evaluate(&self, flag: &str, context: &Value) -> Evaluation {
        let set = self.set();
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let arena = Bump::new();
        let text = context.to_string();
        let ctx = match EvalContext::parse_context(&text, &arena, now_s) {
            Ok(c) => c,
            Err(e) => {
                return Evaluation {
                    key: flag.to_owned(),
                    value: None,
                    variant: None,
                    reason: Reason::Error.as_str(),
                    error: Some(ErrorCode::InvalidContext),
                    error_details: Some(e.to_string()),
                    metadata: Default::default(),
                };
            }
        };
        let r = ctx.evaluate(&set, flag);
        let metadata = r.flag.map(|f| f.metadata.clone()).unwrap_or_default();
        let value = r.value().cloned();
        match r.outcome {
            Outcome::Resolved { variant, reason } => Evaluation {
                key: flag.to_owned(),
                value,
                variant: variant.map(str::to_owned),
                reason: reason.as_str(),
                error: None,
                error_details: None,
                metadata,
            },
            Outcome::Failed { code, details } => Evaluation {
                key: flag.to_owned(),
                value: None,
                variant: None,
                reason: Reason::Error.as_str(),
                error: Some(code),
                error_details: Some(details),
                metadata,
            },
        }
    }
}
