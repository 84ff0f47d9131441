//! Daily token budgets at the door: a session whose budget is spent gets a 429 that says which
//! budget and when it resets; one past the warning threshold gets its answer with a warning
//! header. The monitor charges the tokens when the request finishes.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::errors::ApiError;
use super::AppState;

/// Set on answers to a session past its budget's warning threshold (80% by default).
pub const WARNING: HeaderName = HeaderName::from_static("x-lantern-budget-warning");
/// Tokens left today, on every answer to a session under a budget.
pub const REMAINING: HeaderName = HeaderName::from_static("x-lantern-budget-remaining");

/// What to tell a session that was let in.
pub struct Admitted(Vec<(HeaderName, HeaderValue)>);

/// Let `session` in unless its daily budget is spent.
pub fn admit(state: &AppState, session: &str) -> Result<Admitted, ApiError> {
    let now = crate::clock::unix_seconds();
    let status = match state.monitor.budgets().check(session, now) {
        Ok(Some(status)) => status,
        Ok(None) => return Ok(Admitted(Vec::new())),
        Err(spent) => {
            return Err(ApiError::BudgetExhausted {
                message: spent.exhausted_message(),
                retry_after: (spent.resets_at - now).ceil().max(1.0) as u64,
            })
        }
    };
    let mut headers = vec![(
        REMAINING,
        HeaderValue::from(status.daily_tokens.saturating_sub(status.used_today)),
    )];
    if status.fraction() >= state.monitor.settings().alerts.budget_warning {
        // The message is ASCII unless the session id is not; then the header is left out.
        if let Ok(v) = HeaderValue::from_str(&status.warning()) {
            headers.push((WARNING, v));
        }
    }
    Ok(Admitted(headers))
}

impl Admitted {
    pub fn onto(self, mut response: Response) -> Response {
        response.headers_mut().extend(self.0);
        response
    }
}
