//! The web UI (`ui/`, built by Vite into `ui/dist`), embedded in the binary and served at `/`.
//! Hashed assets are cached for a year; `index.html` is revalidated on every load, so a new
//! binary's UI shows at once.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "ui/dist/"]
#[allow_missing = true]
struct Assets;

/// Paths served without an API key: the page and its static files (the API calls it makes
/// carry the admin cookie, or the key the user typed into Settings).
pub fn is_public(path: &str) -> bool {
    path == "/" || path == "/index.html" || path == "/favicon.svg" || path.starts_with("/assets/")
}

/// Whether this binary was built with the UI.
pub fn built() -> bool {
    Assets::get("index.html").is_some()
}

pub async fn asset(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    let mut response = file_response(path, &uri, &headers);
    // The page load hands the UI the admin token, as a cookie no script can read, and only
    // to a page addressed by a loopback name (the user's own machine).
    let loopback = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| super::browser::host_allowed(h, &[]));
    if path == "index.html" && loopback && response.status().as_u16() < 400 {
        if let Ok(v) = HeaderValue::from_str(&state.admin.set_cookie(state.settings.port())) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    response
}

fn file_response(path: &str, uri: &Uri, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        if path == "index.html" {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(
                    "<!doctype html><title>Lantern</title><h1>Lantern</h1><p>This binary was built \
                     without its web UI. Run <code>make ui</code> (or <code>npm ci &amp;&amp; npm run \
                     build</code> in <code>ui/</code>), then rebuild. The API is at <a \
                     href=\"/v1/models\">/v1</a>.</p>",
                ),
            )
                .into_response();
        }
        return super::errors::ApiError::RouteNotFound(uri.path().to_string()).into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
        )
            .into_response();
    }
    let mut response = file.data.into_owned().into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
