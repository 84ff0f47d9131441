//! Daily token budgets at the door: a session whose budget is spent gets a 429 that says which
//! budget and when it resets; one past the warning threshold gets its answer with a warning
//! header. The monitor charges the tokens when the request finishes.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::errors::ApiError;
use super::AppState;

/// Which response cache answered: `exact`, or `semantic; similarity=0.9731`.
pub const RESPONSE_CACHE: HeaderName = HeaderName::from_static("x-lantern-response-cache");

/// Set on answers to a session past its budget's warning threshold (80% by default).
pub const WARNING: HeaderName = HeaderName::from_static("x-lantern-budget-warning");
/// Tokens left today, on every answer to a session under a budget.
pub const REMAINING: HeaderName = HeaderName::from_static("x-lantern-budget-remaining");

/// The target that answered, when routing chose one (a fallback chain's link, a remote model).
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-lantern-served-by");

/// How routing chose the target: `auto`'s rule, a chain's failed links (ASCII; anything else
/// shown as `?`).
pub const ROUTE: HeaderName = HeaderName::from_static("x-lantern-route");

/// What to tell a session that was let in.
pub struct Admitted(Vec<(HeaderName, HeaderValue)>);

impl Admitted {
    /// The budget's headers of a running request, and which target serves it.
    pub fn of(run: &crate::infer::Run) -> Self {
        let mut this = Self::from(&run.admission);
        if let Some(v) = run
            .served_by
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            this.0.push((SERVED_BY, v));
        }
        if let Some(v) = run
            .cache_hit
            .and_then(|h| HeaderValue::from_str(&h.header()).ok())
        {
            this.0.push((RESPONSE_CACHE, v));
        }
        if let Some(route) = &run.route {
            let ascii: String = route
                .chars()
                .map(|c| {
                    if c.is_ascii() && !c.is_ascii_control() {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&ascii) {
                this.0.push((ROUTE, v));
            }
        }
        this
    }
}

impl From<&crate::infer::Admission> for Admitted {
    fn from(a: &crate::infer::Admission) -> Self {
        let mut headers = Vec::new();
        if let Some(left) = a.remaining {
            headers.push((REMAINING, HeaderValue::from(left)));
        }
        // The message is ASCII unless the session id is not; then the header is left out.
        if let Some(v) = a
            .warning
            .as_deref()
            .and_then(|w| HeaderValue::from_str(w).ok())
        {
            headers.push((WARNING, v));
        }
        Self(headers)
    }
}

/// Let `session` in unless its daily budget is spent (for requests off the inference path:
/// embeddings).
pub fn admit(state: &AppState, session: &str) -> Result<Admitted, ApiError> {
    Ok(Admitted::from(&state.infer.admit(session)?))
}

impl Admitted {
    pub fn onto(self, mut response: Response) -> Response {
        response.headers_mut().extend(self.0);
        response
    }
}
