//! The origin's OpenAPI 3.1 document, generated from its handlers' `#[utoipa::path]`
//! annotations and completed from the route table ([`meridian_net::openapi::complete`]):
//! served at `GET /v1/openapi.json`.

use axum::response::Response;
use utoipa::OpenApi;

use super::rollouts;
use super::{applied, audit, changes, edges, flags, history, kv, namespaces, protections};
use super::{schemas, secrets, status, tokens, ui, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meridian origin API",
        description = "Configuration, feature flags and secrets: writes, history, governance and \
            access control at the origin cluster. Every error is `{\"error\": {\"code\", \"message\"}}`. \
            Guide and examples: docs/API.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        document,
        kv::get_one,
        kv::put,
        kv::patch,
        kv::delete,
        kv::list,
        namespaces::list,
        kv::config,
        kv::txn,
        history::history,
        history::key_diff,
        history::key_rollback,
        history::env_diff,
        history::env_rollback,
        schemas::get_schema,
        schemas::put_schema,
        schemas::delete_schema,
        schemas::list_schemas,
        flags::get_document,
        flags::put_document,
        flags::get_flag,
        flags::put_flag,
        flags::delete_flag,
        flags::history,
        flags::diff,
        flags::rollback,
        flags::exposures,
        flags::ofrep_one,
        flags::ofrep_bulk,
        flags::scoped_one,
        flags::scoped_bulk,
        rollouts::start,
        rollouts::get,
        rollouts::steer,
        rollouts::put_schedule,
        rollouts::get_schedule,
        rollouts::delete_schedule,
        secrets::get,
        secrets::put,
        secrets::delete,
        secrets::rotate,
        secrets::list,
        secrets::due,
        secrets::keys,
        secrets::rotate_kek,
        secrets::rotate_data_key,
        changes::create,
        changes::list,
        changes::show,
        changes::approve,
        changes::reject,
        changes::comment,
        changes::cancel,
        changes::refresh,
        changes::apply,
        protections::list,
        protections::get,
        protections::put,
        protections::delete,
        tokens::create,
        tokens::list,
        tokens::revoke,
        tokens::list_policies,
        tokens::get_policy,
        tokens::put_policy,
        tokens::delete_policy,
        tokens::whoami,
        audit::list,
        audit::head,
        status::backup,
        webhooks::create,
        webhooks::list,
        webhooks::delete,
        webhooks::deliveries,
        ui::page,
        ui::file,
        status::status,
        status::cluster_status,
        status::metrics,
        edges::edges,
        applied::report,
        applied::drift
    ),
    components(schemas(meridian_net::openapi::ErrorBody, meridian_net::openapi::Entry)),
    tags(
        (name = "keys", description = "Configuration values: read, write, list, resolve, transact."),
        (name = "history", description = "Versions, diffs and rollbacks."),
        (name = "schemas", description = "JSON Schemas that writes must satisfy."),
        (name = "flags", description = "Feature flags in flagd's format, rollouts and schedules."),
        (name = "ofrep", description = "OpenFeature Remote Evaluation Protocol."),
        (name = "secrets", description = "Secrets: sealed at the origin, masked unless revealed."),
        (name = "changes", description = "Change requests for protected environments."),
        (name = "governance", description = "Protection rules, webhooks and backups."),
        (name = "access", description = "Tokens, policies and identity."),
        (name = "audit", description = "The tamper-evident audit log."),
        (name = "operations", description = "Status, metrics, edges and drift."),
        (name = "ui", description = "The admin UI (public assets; the page signs in with a token).")
    )
)]
struct OriginApi;

/// This document, as served.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    summary = "This API's OpenAPI 3.1 document",
    responses((status = 200, description = "The document.", content_type = "application/json"))
)]
pub(crate) async fn document() -> Response {
    DOCUMENT.serve()
}

static DOCUMENT: meridian_net::openapi::Document = meridian_net::openapi::Document::new(|| {
    meridian_net::openapi::complete(OriginApi::openapi(), &super::routes().rules())
});

/// The completed document (built once).
pub fn spec() -> &'static serde_json::Value {
    DOCUMENT.get()
}

#[cfg(test)]
mod tests {
    /// Every route of the client API is in the document, and every documented operation is a
    /// route, with a summary and a success answer.
    #[test]
    fn the_document_matches_the_router() {
        let problems =
            meridian_net::openapi::check_against(super::spec(), &super::super::routes().rules());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_eq!(super::spec()["openapi"], "3.1.0");
    }
}
