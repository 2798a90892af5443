//! The admin UI's assets (`ui/` in the repository), embedded in the binary and served at
//! `/ui`: plain HTML, CSS and ES modules, no build step. The assets hold no data and are public;
//! the page asks for a token and sends it with every API request it makes, like any client.
//! Every answer carries a strict Content-Security-Policy (scripts, styles and requests only from
//! this origin; no inline script; no framing), so a value that reaches the page can never run.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_net::http::ApiError;

/// Every asset: its path under `/ui/`, its content type and its bytes.
macro_rules! assets {
    ($($path:literal => $kind:literal),* $(,)?) => {
        &[$(($path, $kind, include_bytes!(concat!("../../../ui/", $path)) as &[u8])),*]
    };
}

/// The assets, by path under `/ui/` (a test checks every file of `ui/` is here).
pub const ASSETS: &[(&str, &str, &[u8])] = assets![
    "index.html" => "text/html; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "js/main.js" => "text/javascript; charset=utf-8",
    "js/api.js" => "text/javascript; charset=utf-8",
    "js/dom.js" => "text/javascript; charset=utf-8",
    "js/keys.js" => "text/javascript; charset=utf-8",
    "js/history.js" => "text/javascript; charset=utf-8",
    "js/flags.js" => "text/javascript; charset=utf-8",
    "js/changes.js" => "text/javascript; charset=utf-8",
    "js/audit.js" => "text/javascript; charset=utf-8",
    "js/edges.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/deep-compare-strict.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/dereference.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/format.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/index.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/pointer.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/types.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/ucs2-length.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/validate.js" => "text/javascript; charset=utf-8",
    "vendor/json-schema/validator.js" => "text/javascript; charset=utf-8",
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(path: &str) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("/ui/{path} is not an asset of the admin UI"),
        )
        .into_response();
    };
    let mut response = axum::body::Bytes::from_static(bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /ui`: the admin UI's page.
#[utoipa::path(get, path = "/ui", tag = "ui",
    summary = "The admin UI",
    responses((status = 200, description = "The page (`text/html`); it signs in with a token.", content_type = "text/html"))
)]
pub(crate) async fn page() -> Response {
    asset("index.html")
}

/// `GET /ui/{path}`: one of the page's assets.
#[utoipa::path(get, path = "/ui/{path}", tag = "ui",
    summary = "An asset of the admin UI",
    responses(
        (status = 200, description = "The asset (HTML, CSS or JavaScript)."),
        (status = 404, description = "`not_found`: no such asset.", body = meridian_net::openapi::ErrorBody)
    )
)]
pub(crate) async fn file(Path(path): Path<String>) -> Response {
    asset(if path.is_empty() { "index.html" } else { &path })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Only the listed assets are served, each with the page's security headers: a path that
    /// climbs out of the folder, names a note or the source tree is 404, never a file.
    #[test]
    fn only_assets_are_served_and_with_a_strict_policy() {
        for path in [
            "../Cargo.toml",
            "../../origin/src/lib.rs",
            "vendor/json-schema/README.md",
            "js/../index.html",
            "%2e%2e/Cargo.toml",
        ] {
            assert_eq!(super::asset(path).status(), 404, "{path}");
        }
        let page = super::asset("index.html");
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            super::asset("js/main.js").headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
    }

    /// Every file under `ui/` (but its notes) is served, and nothing else is listed.
    #[test]
    fn every_file_of_the_ui_folder_is_an_asset() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui");
        let mut files = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_none_or(|e| e != "md") {
                    let rel = path.strip_prefix(&root).unwrap();
                    files.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        files.sort();
        let mut listed: Vec<String> = super::ASSETS
            .iter()
            .map(|(p, _, _)| p.to_string())
            .collect();
        listed.sort();
        assert_eq!(files, listed, "ui/ and the asset table differ");
    }
}
