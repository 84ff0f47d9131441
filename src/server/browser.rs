//! Defences against the web pages a user visits. A page cannot read the answers of a server on
//! another origin, but it can make the browser send requests there, and a page whose own domain
//! resolves to 127.0.0.1 (DNS rebinding) talks to the local port as if it were its own origin.
//!
//! - **Host**: a request whose `Host` is not a loopback name or address (or one the user
//!   allowed) is refused, which defeats rebinding: the browser sends the attacker's domain.
//!   A server that listens off loopback with API keys skips it (the keys protect it then).
//! - **Origin**: a request that can change state or spend compute (every method but GET, HEAD
//!   and OPTIONS) from a browser origin other than the page's own, the desktop app's or the
//!   configured CORS origins is refused (`Origin`, and `Sec-Fetch-Site` where a browser sends
//!   no `Origin`). Clients without either header (SDKs, curl) are not browsers and pass.
//! - **JSON bodies**: a body must say `Content-Type: application/json`. The three types a page
//!   may send without a CORS preflight (`text/plain`, forms) are refused with 415, so a
//!   cross-site POST always needs a preflight, which a foreign origin fails.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;

use super::errors::ApiError;
use super::AppState;

pub async fn defend(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&state, request.method(), request.uri(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => super::errors::error_for(request.uri().path(), e),
    }
}

fn check(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let host = request_host(uri, headers);
    let open = !state.settings.started().host.is_loopback() && !state.keys.is_empty();
    if let Some(host) = &host {
        if !open && !host_allowed(host, &state.settings.allowed_hosts()) {
            return Err(ApiError::Forbidden {
                message: format!(
                    "Host `{host}` is not this server's: Lantern answers requests to loopback \
                     names only (127.0.0.1, [::1], localhost). A web page that points its own \
                     domain at this machine is refused. To reach Lantern under another name, add \
                     it to allowed_hosts (settings) or pass --allowed-host"
                ),
                code: "host_not_allowed",
            });
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match header(header::ORIGIN) {
        Some(origin) => {
            let own = host.as_deref().is_some_and(|h| {
                origin == format!("http://{h}") || origin == format!("https://{h}")
            });
            let listed = state
                .settings
                .cors()
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes());
            if !own && !listed {
                return Err(cross_site(origin));
            }
        }
        None => {
            if matches!(
                headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
                Some("cross-site" | "same-site")
            ) {
                return Err(cross_site("another site"));
            }
        }
    }
    if has_body(headers) && !is_json(header(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Request bodies must be JSON with `Content-Type: application/json` (got {}); with \
             curl, add -H 'Content-Type: application/json'",
            header(header::CONTENT_TYPE)
                .map(|t| format!("`{t}`"))
                .unwrap_or_else(|| "none".into())
        )));
    }
    Ok(())
}

fn cross_site(origin: &str) -> ApiError {
    ApiError::Forbidden {
        message: format!(
            "Cross-site request from {origin} refused: a web page may not use this server unless \
             its origin is in cors_origins (settings) or given with --cors-origin"
        ),
        code: "cross_site_request",
    }
}

/// The `Host` a request was sent to (HTTP/1.1's header, else the URI's authority).
fn request_host(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| uri.authority().map(|a| a.to_string()))
}

/// `name` without its port: `[::1]:8080` → `::1`, `localhost:8080` → `localhost`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A loopback name or address, or one the user allowed.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    if name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(t) = content_type else {
        return false;
    };
    let essence = t
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "app.localhost:3000",
        ] {
            assert!(host_allowed(host, &[]), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8091",
            "localhost.evil.example",
            "192.168.1.2:8080",
            "[::2]:8080",
            "0.0.0.0:8080",
            "[::ffff:7f00:1]",
            "",
        ] {
            assert!(!host_allowed(host, &[]), "{host}");
        }
        let allowed = vec!["lantern.lan".to_string()];
        assert!(host_allowed("lantern.lan:8080", &allowed));
        assert!(host_allowed("Lantern.LAN", &allowed));
        assert!(!host_allowed("other.lan", &allowed));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(is_json(Some("application/merge-patch+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/x-www-form-urlencoded")));
        assert!(!is_json(Some("multipart/form-data; boundary=x")));
        assert!(!is_json(None));
    }
}
