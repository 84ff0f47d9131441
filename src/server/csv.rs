//! CSV exports: one way to quote a field, to answer with a CSV body, and to refuse a format.

use axum::response::{IntoResponse, Response};

use super::errors::ApiError;

/// A `text/csv` answer.
pub fn response(body: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The error for a `format` other than json or csv.
pub fn bad_format(other: &str) -> ApiError {
    ApiError::invalid(
        format!("Invalid 'format' `{other}`: use json or csv"),
        "format",
    )
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(super::field("plain"), "plain");
        assert_eq!(super::field("a,b"), "\"a,b\"");
        assert_eq!(super::field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
