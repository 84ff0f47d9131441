//! `/api/threads`: the Chat page's threads, kept in the database so every window on this server
//! sees one history: listed (paged, searched), created, renamed, deleted with an undo, their
//! messages added, and exported as Markdown or JSON. Answers are written by `thread_reply`.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::store::threads::{Message, MessageState, NewMessage, Thread, ThreadError};
use crate::store::Store;

pub(super) type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// The most threads one page lists.
const MAX_PAGE: usize = 200;

pub(super) fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.database("Threads need")
}

fn no_thread(id: &str) -> ApiError {
    ApiError::RouteNotFound(format!("/api/threads/{id} (no such thread)"))
}

pub(super) fn thread_error(e: ThreadError) -> ApiError {
    match e {
        ThreadError::NoThread(id) => no_thread(&id),
        ThreadError::NoParent(id) => {
            ApiError::invalid(format!("no message `{id}` in this thread"), "parent")
        }
        ThreadError::Store(e) => ApiError::internal(e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    /// The page's cursor: the `updated_at` of the last thread of the page before.
    before: Option<f64>,
    limit: Option<usize>,
}

/// `GET /api/threads?q=&before=&limit=`: the most recently active first.
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let threads = store(&state)?
        .threads_list(query.q.as_deref(), query.before, limit)
        .await
        .map_err(ApiError::internal)?;
    let next = (threads.len() == limit).then(|| threads.last().map(|t| t.updated_at));
    Ok(Json(
        json!({"threads": threads, "next_before": next.flatten()}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThreadBody {
    title: Option<String>,
    settings: Option<Value>,
    /// The message whose branch the thread shows.
    leaf: Option<String>,
}

fn check_settings(settings: Option<&Value>) -> Result<(), ApiError> {
    match settings {
        Some(s) if !s.is_object() => Err(ApiError::invalid("'settings' is an object", "settings")),
        _ => Ok(()),
    }
}

/// `POST /api/threads`: a new thread, with an optional title and settings.
pub async fn create(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body: ThreadBody = super::body::parse_body(body, state.body_limit)?;
    check_settings(body.settings.as_ref())?;
    let settings = body.settings.unwrap_or_else(|| json!({}));
    let thread = store(&state)?
        .thread_create(body.title.as_deref().unwrap_or(""), &settings)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(thread)).into_response())
}

async fn whole(state: &AppState, id: &str) -> Result<(Thread, Vec<Message>), ApiError> {
    let db = store(state)?;
    let thread = db
        .thread_get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| no_thread(id))?;
    let messages = db.thread_messages(id).await.map_err(ApiError::internal)?;
    Ok((thread, messages))
}

/// `GET /api/threads/{id}`: the thread with every message of every branch.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (thread, messages) = whole(&state, &id).await?;
    Ok(Json(json!({"thread": thread, "messages": messages})))
}

/// `PATCH /api/threads/{id}`: rename, save the side panel, or show another branch.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Thread>, ApiError> {
    let body: ThreadBody = super::body::parse_body(body, state.body_limit)?;
    check_settings(body.settings.as_ref())?;
    let thread = store(&state)?
        .thread_update(
            &id,
            body.title.as_deref(),
            body.settings.as_ref(),
            body.leaf.as_deref(),
        )
        .await
        .map_err(|e| match e {
            ThreadError::NoParent(m) => {
                ApiError::invalid(format!("no message `{m}` in this thread"), "leaf")
            }
            e => thread_error(e),
        })?
        .ok_or_else(|| no_thread(&id))?;
    Ok(Json(thread))
}

/// `DELETE /api/threads/{id}`: gone from the list; `POST .../restore` undoes it for a week.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let changed = store(&state)?
        .thread_set_deleted(&id, true)
        .await
        .map_err(ApiError::internal)?;
    if !changed {
        return Err(no_thread(&id));
    }
    Ok(Json(json!({"id": id, "deleted": true})))
}

/// `POST /api/threads/{id}/restore`: undo a delete.
pub async fn restore(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let changed = store(&state)?
        .thread_set_deleted(&id, false)
        .await
        .map_err(ApiError::internal)?;
    if !changed {
        return Err(ApiError::RouteNotFound(format!(
            "/api/threads/{id}/restore (no deleted thread of that id)"
        )));
    }
    Ok(Json(json!({"id": id, "deleted": false})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    /// The message this one answers or follows; none for the first.
    parent: Option<String>,
    content: String,
}

/// `POST /api/threads/{id}/messages`: a user's message, saved before it is sent; a message
/// under the parent of an earlier one is an edit, and the earlier branch stays.
pub async fn add_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: MessageBody = super::body::parse_body(body, state.body_limit)?;
    if body.content.trim().is_empty() {
        return Err(ApiError::invalid("'content' is empty", "content"));
    }
    let message = store(&state)?
        .message_add(
            &id,
            NewMessage {
                parent_id: body.parent,
                role: "user".into(),
                content: body.content,
                model: None,
                sampling: None,
                state: MessageState::Complete,
            },
        )
        .await
        .map_err(thread_error)?;
    Ok((StatusCode::CREATED, Json(message)).into_response())
}

/// The messages from the first to `leaf`, in order.
pub(super) fn branch<'a>(messages: &'a [Message], leaf: Option<&str>) -> Vec<&'a Message> {
    let mut path = Vec::new();
    let mut at = leaf;
    while let Some(id) = at {
        let Some(m) = messages.iter().find(|m| m.id == id) else {
            break;
        };
        path.push(m);
        at = m.parent_id.as_deref();
        if path.len() > messages.len() {
            break;
        }
    }
    path.reverse();
    path
}

#[derive(Deserialize)]
pub struct ExportQuery {
    format: Option<String>,
}

/// `GET /api/threads/{id}/export?format=md|json`: the shown branch as Markdown, or the whole
/// thread (every branch) as JSON; a download either way.
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let (thread, messages) = whole(&state, &id).await?;
    let stem: String = thread
        .title
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(48)
        .collect();
    let stem = if stem.is_empty() {
        "thread".into()
    } else {
        stem
    };
    let (body, kind, ext) = match query.format.as_deref().unwrap_or("md") {
        "md" | "markdown" => (
            markdown(&thread, &branch(&messages, thread.leaf.as_deref())),
            "text/markdown; charset=utf-8",
            "md",
        ),
        "json" => (
            serde_json::to_string_pretty(&json!({"thread": thread, "messages": messages}))
                .map_err(ApiError::internal)?,
            "application/json",
            "json",
        ),
        other => {
            return Err(ApiError::invalid(
                format!("'format' is md or json, not `{other}`"),
                "format",
            ))
        }
    };
    let disposition = format!("attachment; filename=\"{stem}.{ext}\"");
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

fn markdown(thread: &Thread, path: &[&Message]) -> String {
    let mut out = format!("# {}\n", thread.title);
    if let Some(system) = thread.settings.get("system").and_then(Value::as_str) {
        if !system.trim().is_empty() {
            out += &format!("\n> System: {}\n", system.trim().replace('\n', "\n> "));
        }
    }
    for m in path {
        let who = match (m.role.as_str(), &m.model) {
            ("assistant", Some(model)) => format!("Assistant ({model})"),
            ("assistant", None) => "Assistant".into(),
            _ => "You".into(),
        };
        out += &format!("\n## {who}\n\n");
        if !m.reasoning.trim().is_empty() {
            out += &format!(
                "<details><summary>Thinking</summary>\n\n{}\n\n</details>\n\n",
                m.reasoning.trim()
            );
        }
        out += m.content.trim_end();
        out += "\n";
        match m.state {
            MessageState::Interrupted => out += "\n*(interrupted)*\n",
            MessageState::Error => {
                out += &format!("\n*(error: {})*\n", m.error.as_deref().unwrap_or("unknown"))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, parent: Option<&str>, role: &str, content: &str) -> Message {
        Message {
            id: id.into(),
            parent_id: parent.map(String::from),
            role: role.into(),
            content: content.into(),
            reasoning: String::new(),
            model: (role == "assistant").then(|| "smollm2".into()),
            sampling: None,
            figures: None,
            state: MessageState::Complete,
            error: None,
            vote: None,
            created_at: 0.0,
            updated_at: 0.0,
        }
    }

    #[test]
    fn a_branch_follows_parents_and_the_markdown_shows_only_it() {
        let all = vec![
            message("a", None, "user", "first question"),
            message("b", Some("a"), "assistant", "first answer"),
            message("c", None, "user", "edited question"),
            message("d", Some("c"), "assistant", "second answer"),
        ];
        let path = branch(&all, Some("d"));
        assert_eq!(
            path.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        let thread = Thread {
            id: "t".into(),
            title: "T".into(),
            settings: json!({"system": "Be brief."}),
            leaf: Some("d".into()),
            created_at: 0.0,
            updated_at: 0.0,
        };
        let md = markdown(&thread, &path);
        assert!(md.starts_with("# T\n\n> System: Be brief.\n"), "{md}");
        assert!(
            md.contains("## Assistant (smollm2)\n\nsecond answer"),
            "{md}"
        );
        assert!(!md.contains("first answer"), "{md}");
        assert!(branch(&all, None).is_empty());
    }
}
