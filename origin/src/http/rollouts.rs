//! Progressive delivery of one flag: `POST /v1/flags/{app}/{env}/{flag}/rollout` starts a
//! plan, `GET` shows its progress, `POST …/rollout/{pause|resume|abort}` steers it; `PUT/GET/
//! DELETE …/schedule` holds a change that takes effect at a given time. Each is one
//! transaction conditioned on the versions it read; the leader advances what is due
//! ([`crate::rollout`]).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_protocol::auth::Principal;
use meridian_protocol::flags::record_key;
use meridian_protocol::flags::rollout::{
    Rollout, RolloutError, Scheduled, Step, rollout_key, schedule_key,
};
use meridian_protocol::{Address, CacheState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Shared, cluster_error, commit, count_error, parse_body, write_meta};
use meridian_core::apply::{Command, Condition, TxnOp};

fn at(app: &str, env: &str, key: String) -> Address {
    Address {
        app: app.to_owned(),
        env: env.to_owned(),
        key,
    }
}

fn flag_path(
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<(String, String, String), ApiError> {
    super::flags::flag_path(path)
}

/// A live record's version and parsed value.
fn read(state: &CacheState, a: &Address) -> Option<(u64, Value)> {
    state
        .get_live(&a.app, &a.env, &a.key)
        .and_then(|e| Some((e.version.0, serde_json::from_str(e.value.as_deref()?).ok()?)))
}

fn version_condition(a: Address, version: Option<u64>) -> Condition {
    match version {
        Some(v) => Condition::VersionEquals(a, v),
        None => Condition::Absent(a),
    }
}

fn not_found(what: &str, app: &str, env: &str, flag: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        if what == "flag" {
            "flag_not_found"
        } else {
            "not_found"
        },
        format!("{app}/{env} flag {flag:?} has no {what}"),
    )
}

fn refused(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Plan(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_rollout", m),
        e @ RolloutError::State(..) => {
            ApiError::new(StatusCode::CONFLICT, "rollout_state", e.to_string())
        }
    }
}

async fn snapshot<T>(
    state: &Arc<AppState>,
    read: impl FnOnce(&CacheState) -> T,
) -> Result<T, ApiError> {
    state.cluster.linearize().await.map_err(cluster_error)?;
    let p = state.reader.read().unwrap_or_else(|e| e.into_inner());
    Ok(read(&p.state))
}

/// What `GET …/rollout` answers.
pub fn view(flag: &str, version: u64, r: &Rollout) -> Value {
    json!({
        "flag": flag,
        "version": version,
        "state": r.state,
        "step": r.step,
        "steps": r.steps,
        "weights": r.steps.get(r.step).map(|s| &s.weights),
        "next_at_ms": r.next_at_ms,
        "remaining_ms": r.remaining_ms,
        "started_ms": r.started_ms,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    #[schema(value_type = Vec<Object>)]
    steps: Vec<Step>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST …/rollout` `{"steps": [{"weights": {"on": 10, "off": 90}, "hold_s": 600}, …]}`.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/{flag}/rollout", tag = "flags",
    summary = "Start a progressive rollout of a flag",
    request_body = StartBody,
    responses((status = 200, description = "The rollout.", body = meridian_net::openapi::AnyObject), (status = 409, description = "A rollout is already running.", body = meridian_net::openapi::ErrorBody), (status = 422, description = "`invalid_rollout`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn start(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let b: StartBody = parse_body(body)?;
        let meta = write_meta(&principal, &request, b.reason)?;
        let (fa, ra) = (
            at(&app, &env, record_key(&flag)),
            at(&app, &env, rollout_key(&flag)),
        );
        let (current, existing) = snapshot(&state, |s| (read(s, &fa), read(s, &ra))).await?;
        let Some((flag_version, definition)) = current else {
            return Err(not_found("flag", &app, &env, &flag));
        };
        if let Some((_, r)) = &existing
            && let Ok(r) = serde_json::from_value::<Rollout>(r.clone())
            && !r.is_over()
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "rollout_running",
                format!("{flag} has a {:?} rollout; abort it first", r.state),
            ));
        }
        let now = meridian_core::history::now_ms();
        let (rollout, first) = Rollout::start(b.steps, &definition, now).map_err(refused)?;
        let command = Command::Txn {
            conditions: vec![
                Condition::VersionEquals(fa.clone(), flag_version),
                version_condition(ra.clone(), existing.map(|(v, _)| v)),
            ],
            ops: vec![
                TxnOp::Put(fa, first.to_string().into()),
                TxnOp::Put(ra.clone(), json!(rollout).to_string().into()),
            ],
        };
        let applied = commit(&state, command, meta).await?;
        let version = applied
            .entries
            .iter()
            .find(|(a, _)| *a == ra)
            .map_or(0, |(_, e)| e.version.0);
        Ok((
            StatusCode::CREATED,
            axum::Json(view(&flag, version, &rollout)),
        )
            .into_response())
    };
    inner.await.map_err(count_error)
}

/// `GET …/rollout`: the plan, its step, its weights now and when the next step is due.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}/rollout", tag = "flags",
    summary = "A flag's rollout: plan, step, weights, next step",
    responses((status = 200, description = "The rollout.", body = meridian_net::openapi::AnyObject, example = json!({"flag":"new-checkout","state":"running","step":1,"steps":[{"weights":{"on":10,"off":90},"hold_s":600}],"next_step_ms":1796543810123_u64})), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let ra = at(&app, &env, rollout_key(&flag));
        let found = snapshot(&state, |s| read(s, &ra)).await?;
        let Some((version, r)) = found else {
            return Err(not_found("rollout", &app, &env, &flag));
        };
        let r: Rollout = serde_json::from_value(r).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(axum::Json(view(&flag, version, &r)).into_response())
    };
    inner.await.map_err(count_error)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SteerBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST …/rollout/{pause|resume|abort}`: abort puts the definition from before the rollout
/// back in the same revision.
#[utoipa::path(post, path = "/v1/flags/{app}/{env}/{flag}/rollout/{action}", tag = "flags",
    summary = "Pause, resume or abort a rollout",
    request_body = SteerBody,
    responses((status = 200, description = "The rollout.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 409, description = "Not possible in the rollout's state.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn steer(
    State(state): Shared,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let Path((app, env, flag, action)) = path.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                format!("bad path: {e}"),
            )
        })?;
        let (app, env, flag) = flag_path(Ok(Path((app, env, flag))))?;
        let body = body.map_err(super::body_error)?;
        let b: SteerBody = if body.is_empty() {
            SteerBody::default()
        } else {
            super::json_body(&body)?
        };
        let mut meta = write_meta(&principal, &request, b.reason)?;
        meta.action = Some(format!("rollout-{action}"));
        let (fa, ra) = (
            at(&app, &env, record_key(&flag)),
            at(&app, &env, rollout_key(&flag)),
        );
        let (current, found) = snapshot(&state, |s| (read(s, &fa), read(s, &ra))).await?;
        let Some((version, r)) = found else {
            return Err(not_found("rollout", &app, &env, &flag));
        };
        let r: Rollout = serde_json::from_value(r).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let now = meridian_core::history::now_ms();
        let mut conditions = vec![Condition::VersionEquals(ra.clone(), version)];
        let (next, mut ops) = match action.as_str() {
            "pause" => (r.pause(now).map_err(refused)?, Vec::new()),
            "resume" => (r.resume(now).map_err(refused)?, Vec::new()),
            "abort" => {
                let (next, before) = r.abort().map_err(refused)?;
                conditions.push(version_condition(fa.clone(), current.map(|(v, _)| v)));
                (next, vec![TxnOp::Put(fa, before.to_string().into())])
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_route",
                    format!("a rollout can be paused, resumed or aborted, not {other:?}"),
                ));
            }
        };
        ops.push(TxnOp::Put(ra.clone(), json!(next).to_string().into()));
        let applied = commit(&state, Command::Txn { conditions, ops }, meta).await?;
        let version = applied
            .entries
            .iter()
            .find(|(a, _)| *a == ra)
            .map_or(0, |(_, e)| e.version.0);
        let mut answer = view(&flag, version, &next);
        answer["revision"] = applied.revision.0.into();
        Ok(axum::Json(answer).into_response())
    };
    inner.await.map_err(count_error)
}

/// `PUT …/schedule` `{"at_ms": T, "definition": {…} | null, "reason"?}`: the definition is
/// checked now (and again when it applies); `null` deletes the flag at T.
#[utoipa::path(put, path = "/v1/flags/{app}/{env}/{flag}/schedule", tag = "flags",
    summary = "Schedule a change of a flag's definition",
    request_body(content = meridian_net::openapi::AnyObject, description = "`{\"at_ms\", \"definition\" (null: delete), \"reason\"?}`", example = json!({"at_ms":1796543810123_u64,"definition":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"}})),
    responses((status = 200, description = "The schedule.", body = meridian_net::openapi::AnyObject), (status = 422, description = "`invalid_flags`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn put_schedule(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let s: Scheduled = parse_body(body)?;
        let meta = write_meta(&principal, &request, s.reason.clone())?;
        let fa = at(&app, &env, record_key(&flag));
        let checked = snapshot(&state, |c| match &s.definition {
            Some(d) => crate::flagset::with_flag(c.namespace(&app, &env), &flag, d.clone())
                .map(|_| ())
                .map_err(super::flags::invalid),
            None if read(c, &fa).is_none() => Err(not_found("flag", &app, &env, &flag)),
            None => Ok(()),
        })
        .await?;
        checked?;
        let sa = at(&app, &env, schedule_key(&flag));
        let command = Command::Txn {
            conditions: Vec::new(),
            ops: vec![TxnOp::Put(sa, json!(s).to_string().into())],
        };
        let applied = commit(&state, command, meta).await?;
        Ok(
            axum::Json(json!({"flag": flag, "at_ms": s.at_ms, "revision": applied.revision.0}))
                .into_response(),
        )
    };
    inner.await.map_err(count_error)
}

/// `GET …/schedule`.
#[utoipa::path(get, path = "/v1/flags/{app}/{env}/{flag}/schedule", tag = "flags",
    summary = "A flag's scheduled change",
    responses((status = 200, description = "The schedule.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn get_schedule(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let sa = at(&app, &env, schedule_key(&flag));
        match snapshot(&state, |s| read(s, &sa)).await? {
            Some((_, v)) => Ok(axum::Json(v).into_response()),
            None => Err(not_found("scheduled change", &app, &env, &flag)),
        }
    };
    inner.await.map_err(count_error)
}

/// `DELETE …/schedule`: cancels the scheduled change.
#[utoipa::path(delete, path = "/v1/flags/{app}/{env}/{flag}/schedule", tag = "flags",
    summary = "Cancel a flag's scheduled change",
    responses((status = 200, description = "The revision.", body = meridian_net::openapi::AnyObject), (status = 404, description = "`not_found`.", body = meridian_net::openapi::ErrorBody), (status = 503, description = "`no_quorum`: the cluster cannot commit now.", body = meridian_net::openapi::ErrorBody))
)]
pub(crate) async fn delete_schedule(
    State(state): Shared,
    path: Result<Path<(String, String, String)>, PathRejection>,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    let inner = async {
        let (app, env, flag) = flag_path(path)?;
        let meta = write_meta(&principal, &request, None)?;
        let command = Command::Delete {
            address: at(&app, &env, schedule_key(&flag)),
            expect_version: None,
        };
        let applied = commit(&state, command, meta).await.map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                not_found("scheduled change", &app, &env, &flag)
            } else {
                e
            }
        })?;
        Ok(axum::Json(json!({"revision": applied.revision.0})).into_response())
    };
    inner.await.map_err(count_error)
}
