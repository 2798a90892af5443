//! The edge's OpenAPI 3.1 document, generated from its handlers' `#[utoipa::path]`
//! annotations and completed from the route table ([`meridian_net::openapi::complete`]):
//! served at `GET /v1/openapi.json`.

use axum::response::Response;
use utoipa::OpenApi;

use crate::{api, ofrep};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meridian edge API",
        description = "Reads of configuration, flags (OFREP) and secrets from an edge's local, \
            verified copy, and push (SSE, WebSocket). Every read answers `meridian-revision` and \
            `meridian-staleness-ms`; `?min_revision=R&wait_ms=N` reads your writes. Every error is \
            `{\"error\": {\"code\", \"message\"}}`. Guide and examples: docs/API.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        document,
        api::get_one,
        api::list,
        api::config,
        api::get_secret,
        api::list_secrets,
        ofrep::document,
        ofrep::one,
        ofrep::bulk,
        ofrep::scoped_one,
        ofrep::scoped_bulk,
        api::applied,
        api::watch_sse,
        api::watch_ws,
        api::whoami,
        api::status,
        api::metrics
    ),
    components(schemas(meridian_net::openapi::ErrorBody, meridian_net::openapi::Entry)),
    tags(
        (name = "keys", description = "Configuration values, read from the edge's copy."),
        (name = "secrets", description = "Secrets, masked unless revealed."),
        (name = "flags", description = "Feature flags in flagd's format."),
        (name = "ofrep", description = "OpenFeature Remote Evaluation Protocol."),
        (name = "watch", description = "Push: every change, in order, resumable."),
        (name = "access", description = "Identity."),
        (name = "operations", description = "Status, metrics and applied-config reports.")
    )
)]
struct EdgeApi;

/// This document, as served.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    summary = "This API's OpenAPI 3.1 document",
    responses((status = 200, description = "The document.", content_type = "application/json"))
)]
pub(crate) async fn document() -> Response {
    DOCUMENT.serve()
}

static DOCUMENT: meridian_net::openapi::Document = meridian_net::openapi::Document::new(|| {
    meridian_net::openapi::complete(EdgeApi::openapi(), &api::routes().rules())
});

/// The completed document (built once).
pub fn spec() -> &'static serde_json::Value {
    DOCUMENT.get()
}

#[cfg(test)]
mod tests {
    /// Every route of the edge's API is in the document, and every documented operation is a
    /// route, with a summary and a success answer.
    #[test]
    fn the_document_matches_the_router() {
        let problems =
            meridian_net::openapi::check_against(super::spec(), &crate::api::routes().rules());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_eq!(super::spec()["openapi"], "3.1.0");
    }
}
