//! `/docs`: the API reference, the OpenAPI document rendered in the browser by Redoc.
//!
//! Redoc's standalone bundle is taken from npm at build time (`make npm`, see `build.rs`) and
//! served from here, so the page needs nothing from another host. A server built without
//! the bundle answers `/docs` with a short page pointing at `/openapi.json`. Nothing on the
//! page comes from another host.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/redoc.rs"));

/// Where the page loads the bundle from.
const BUNDLE_PATH: &str = "/docs/redoc.standalone.js";
/// The one thing the bundle fetches from another host: the logo of its "API docs by Redocly"
/// footer link. It is replaced by an empty image inline, so the page loads nothing from
/// elsewhere (the link stays).
const OUTSIDE_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";
const EMPTY_IMAGE: &str =
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E";

/// The bundle as served.
static BUNDLE: std::sync::LazyLock<Option<String>> =
    std::sync::LazyLock::new(|| REDOC_JS.map(|js| js.replace(OUTSIDE_LOGO, EMPTY_IMAGE)));

/// The reference page.
pub async fn page() -> Response {
    let body = match REDOC_JS {
        Some(_) => format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Connector API reference</title>
<link rel="icon" href="data:,">
</head>
<body>
<redoc spec-url="/openapi.json" hide-download-button="false" native-scrollbars="true"></redoc>
<script src="{BUNDLE_PATH}"></script>
</body>
</html>
"#
        ),
        None => r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connector API reference</title><link rel="icon" href="data:,"></head>
<body><p>This server was built without the reference renderer (<code>make npm</code> fetches it).
The API is described by its OpenAPI document: <a href="/openapi.json">/openapi.json</a>.</p></body></html>
"#
        .to_owned(),
    };
    ([(header::CACHE_CONTROL, "no-cache")], Html(body)).into_response()
}

/// Redoc's bundle: the same bytes for the life of this binary.
pub async fn bundle() -> Response {
    match BUNDLE.as_deref() {
        Some(js) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            js,
        )
            .into_response(),
        None => super::api::ApiError::not_found(
            "this server was built without the reference renderer: the document is at /openapi.json",
        )
        .into_response(),
    }
}
