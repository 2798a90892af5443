//! `GET /v1/namespaces`: the app/env pairs that hold configuration the caller may read, with how
//! many such keys each holds: what a person browsing the store (the admin UI) starts from.
//! The system app (`_meridian`: tokens, policies, edges, ...) and internal records (flag sets,
//! schemas) are left out; a namespace with no key the caller may read is not named.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use meridian_net::auth::RequestMeta;
use meridian_net::http::ApiError;
use meridian_protocol::addr::is_internal_record;
use meridian_protocol::auth::{Principal, SYSTEM_APP};

use super::kv::linearized_read;
use super::{Shared, count_error};

/// `GET /v1/namespaces`.
#[utoipa::path(get, path = "/v1/namespaces", tag = "keys",
    summary = "The app/env pairs holding keys the caller may read",
    responses((status = 200, description = "Namespaces, sorted, with how many readable keys each holds.",
        body = meridian_net::openapi::NamespaceList,
        example = json!({"revision": 27, "namespaces": [{"app": "_", "env": "_", "keys": 1}, {"app": "payments", "env": "prod", "keys": 6}]})))
)]
pub(crate) async fn list(
    State(state): Shared,
    Extension(principal): Extension<Arc<Principal>>,
    Extension(request): Extension<RequestMeta>,
) -> Result<Response, ApiError> {
    linearized_read(&state, &principal, &request, None, |s, access| {
        let visible = access.visible;
        let mut namespaces = Vec::new();
        for (app, env) in s.namespaces() {
            if app == SYSTEM_APP {
                continue;
            }
            let keys = s.namespace(app, env).map_or(0, |ns| {
                ns.iter()
                    .filter(|(k, e)| {
                        !e.is_tombstone() && !is_internal_record(k) && visible(app, env, k)
                    })
                    .count()
            });
            if keys > 0 {
                namespaces.push(serde_json::json!({"app": app, "env": env, "keys": keys}));
            }
        }
        Ok(serde_json::to_vec(&serde_json::json!({
            "revision": s.revision().0,
            "namespaces": namespaces,
        }))
        .expect("JSON serializes"))
    })
    .await
    .map_err(count_error)
}
