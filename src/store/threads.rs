//! Chat threads and their messages. A message is saved before it is sent and an answer while it
//! streams, so a reload or a restart shows what arrived; a message never changes once complete
//! (an edit or a regeneration is a sibling in the tree, keeping the earlier branch).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row as _;

use super::{Store, StoreError};

/// The title a thread has until its first message names it.
pub const UNTITLED: &str = "New chat";

/// How long a deleted thread waits for its undo before it is gone.
const DELETED_KEPT_SECONDS: f64 = 7.0 * 86_400.0;

#[derive(Debug, Clone, Serialize)]
pub struct Thread {
    pub id: String,
    pub title: String,
    /// The side panel's settings (model, system prompt, sampling, ...), as the UI wrote them.
    pub settings: Value,
    /// The message that ends the branch the thread shows.
    pub leaf: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

/// Where an answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Complete,
    /// Being written by a running request.
    Streaming,
    /// The request ended early (a stop, a reload, a restart): the text is what arrived.
    Interrupted,
    Error,
}

impl MessageState {
    fn name(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Streaming => "streaming",
            Self::Interrupted => "interrupted",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "complete" => Self::Complete,
            "streaming" => Self::Streaming,
            "error" => Self::Error,
            _ => Self::Interrupted,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: String,
    pub parent_id: Option<String>,
    pub role: String,
    pub content: String,
    pub reasoning: String,
    pub model: Option<String>,
    pub sampling: Option<Value>,
    pub figures: Option<Value>,
    pub state: MessageState,
    pub error: Option<String>,
    /// A compare's vote on this answer: `{"experiment", "result": won|lost|tie}`.
    pub vote: Option<Value>,
    pub created_at: f64,
    pub updated_at: f64,
}

/// A message to add to a thread.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub parent_id: Option<String>,
    pub role: String,
    pub content: String,
    pub model: Option<String>,
    pub sampling: Option<Value>,
    pub state: MessageState,
}

/// What a running answer has so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub content: String,
    pub reasoning: String,
    pub figures: Option<Value>,
    pub error: Option<String>,
}

/// Why a message could not be added.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("no thread `{0}`")]
    NoThread(String),
    #[error("no message `{0}` in this thread")]
    NoParent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ThreadError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

fn json_of(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn thread_of(r: &sqlx::sqlite::SqliteRow) -> Thread {
    Thread {
        id: r.get(0),
        title: r.get(1),
        settings: json_of(r.get(2)).unwrap_or(Value::Object(Default::default())),
        leaf: r.get(3),
        created_at: r.get(4),
        updated_at: r.get(5),
    }
}

fn message_of(r: &sqlx::sqlite::SqliteRow) -> Message {
    Message {
        id: r.get(0),
        parent_id: r.get(1),
        role: r.get(2),
        content: r.get(3),
        reasoning: r.get(4),
        model: r.get(5),
        sampling: json_of(r.get(6)),
        figures: json_of(r.get(7)),
        state: MessageState::parse(&r.get::<String, _>(8)),
        error: r.get(9),
        vote: json_of(r.get(10)),
        created_at: r.get(11),
        updated_at: r.get(12),
    }
}

const THREAD_COLUMNS: &str = "id, title, settings, leaf, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, parent_id, role, content, reasoning, model, sampling, \
                               figures, state, error, vote, created_at, updated_at";

/// A title from a first message: its first line, cut at a word near 60 characters.
pub fn title_of(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() <= 60 {
        return if line.is_empty() {
            UNTITLED.into()
        } else {
            line.into()
        };
    }
    let cut: String = line.chars().take(60).collect();
    let at = cut.rfind(' ').filter(|&i| i > 30).unwrap_or(cut.len());
    format!("{}…", cut[..at].trim_end())
}

/// `LIKE` pattern for a search text, its wildcards taken literally.
fn like_pattern(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("%{escaped}%")
}

impl Store {
    pub async fn thread_create(&self, title: &str, settings: &Value) -> Result<Thread, StoreError> {
        let now = crate::clock::unix_seconds();
        let id = new_id("thr");
        let title = if title.trim().is_empty() {
            UNTITLED
        } else {
            title.trim()
        };
        sqlx::query(
            "INSERT INTO threads (id, title, settings, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(title)
        .bind(settings.to_string())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self.thread_get(&id).await?.expect("just written"))
    }

    /// Threads not deleted, the most recently active first, `updated_at` below `before` (the
    /// page's cursor); with `search`, those whose title or any message holds the text.
    pub async fn threads_list(
        &self,
        search: Option<&str>,
        before: Option<f64>,
        limit: usize,
    ) -> Result<Vec<Thread>, StoreError> {
        // Deleted threads past their undo are dropped here, where nobody waits on a request.
        sqlx::query("DELETE FROM threads WHERE deleted_at < ?")
            .bind(crate::clock::unix_seconds() - DELETED_KEPT_SECONDS)
            .execute(&self.pool)
            .await?;
        let pattern = search.filter(|s| !s.trim().is_empty()).map(like_pattern);
        let rows = sqlx::query(&format!(
            "SELECT {THREAD_COLUMNS} FROM threads t WHERE deleted_at IS NULL \
             AND updated_at < ?1 \
             AND (NOT ?2 OR title LIKE ?3 ESCAPE '\\' OR EXISTS (SELECT 1 FROM \
                  thread_messages m WHERE m.thread_id = t.id AND m.content LIKE ?3 ESCAPE '\\')) \
             ORDER BY updated_at DESC LIMIT ?4"
        ))
        .bind(before.unwrap_or(f64::MAX))
        .bind(pattern.is_some())
        .bind(&pattern)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(thread_of).collect())
    }

    /// A thread that is not deleted.
    pub async fn thread_get(&self, id: &str) -> Result<Option<Thread>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {THREAD_COLUMNS} FROM threads WHERE id = ? AND deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(thread_of))
    }

    /// Every message of a thread, every branch, in the order they were written.
    pub async fn thread_messages(&self, id: &str) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM thread_messages WHERE thread_id = ? ORDER BY seq"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_of).collect())
    }

    /// Rename, change the settings or show another branch; None when there is no such thread.
    pub async fn thread_update(
        &self,
        id: &str,
        title: Option<&str>,
        settings: Option<&Value>,
        leaf: Option<&str>,
    ) -> Result<Option<Thread>, ThreadError> {
        if let Some(leaf) = leaf {
            let found = sqlx::query("SELECT 1 FROM thread_messages WHERE id = ? AND thread_id = ?")
                .bind(leaf)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if found.is_none() {
                return Err(ThreadError::NoParent(leaf.into()));
            }
        }
        let result = sqlx::query(
            "UPDATE threads SET title = COALESCE(?, title), settings = COALESCE(?, settings), \
             leaf = COALESCE(?, leaf), updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(title.map(str::trim).filter(|t| !t.is_empty()))
        .bind(settings.map(Value::to_string))
        .bind(leaf)
        .bind(crate::clock::unix_seconds())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.thread_get(id).await?)
    }

    /// Delete (`deleted: true`) or undo a delete; false when there was nothing to change.
    pub async fn thread_set_deleted(&self, id: &str, deleted: bool) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE threads SET deleted_at = ? WHERE id = ? AND (deleted_at IS NULL) = ?",
        )
        .bind(deleted.then(crate::clock::unix_seconds))
        .bind(id)
        .bind(deleted)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Add a message under `parent_id` (which must be in the thread) and show its branch; the
    /// first user message of an untitled thread names it.
    pub async fn message_add(&self, thread: &str, m: NewMessage) -> Result<Message, ThreadError> {
        // IMMEDIATE: the transaction reads, then writes; a deferred one would fail with
        // SQLITE_BUSY_SNAPSHOT when another connection (the request log) wrote in between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let title: Option<String> =
            sqlx::query_scalar("SELECT title FROM threads WHERE id = ? AND deleted_at IS NULL")
                .bind(thread)
                .fetch_optional(&mut *tx)
                .await?;
        let title = title.ok_or_else(|| ThreadError::NoThread(thread.into()))?;
        if let Some(parent) = &m.parent_id {
            let found = sqlx::query("SELECT 1 FROM thread_messages WHERE id = ? AND thread_id = ?")
                .bind(parent)
                .bind(thread)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(ThreadError::NoParent(parent.clone()));
            }
        }
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM thread_messages WHERE thread_id = ?",
        )
        .bind(thread)
        .fetch_one(&mut *tx)
        .await?;
        let now = crate::clock::unix_seconds();
        let id = new_id("msg");
        sqlx::query(
            "INSERT INTO thread_messages (id, thread_id, parent_id, seq, role, content, model, \
             sampling, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(thread)
        .bind(&m.parent_id)
        .bind(seq)
        .bind(&m.role)
        .bind(&m.content)
        .bind(&m.model)
        .bind(m.sampling.as_ref().map(Value::to_string))
        .bind(m.state.name())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let named = (title == UNTITLED && m.role == "user").then(|| title_of(&m.content));
        sqlx::query(
            "UPDATE threads SET leaf = ?, updated_at = ?, title = COALESCE(?, title) WHERE id = ?",
        )
        .bind(&id)
        .bind(now)
        .bind(named)
        .bind(thread)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM thread_messages WHERE id = ?"
        ))
        .bind(&id)
        .fetch_one(&self.pool)
        .await?;
        Ok(message_of(&row))
    }

    /// Write what a running answer has so far, and where it stands.
    pub async fn message_progress(
        &self,
        id: &str,
        progress: &Progress,
        state: MessageState,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE thread_messages SET content = ?, reasoning = ?, figures = ?, error = ?, \
             state = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&progress.content)
        .bind(&progress.reasoning)
        .bind(progress.figures.as_ref().map(Value::to_string))
        .bind(&progress.error)
        .bind(state.name())
        .bind(crate::clock::unix_seconds())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record a compare's vote on its answers; false (and nothing written) when one of them
    /// already has one.
    pub async fn messages_vote(&self, votes: &[(&str, Value)]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (id, vote) in votes {
            let result =
                sqlx::query("UPDATE thread_messages SET vote = ? WHERE id = ? AND vote IS NULL")
                    .bind(vote.to_string())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            if result.rows_affected() == 0 {
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// At start: answers left streaming by a server that stopped are interrupted.
    pub async fn messages_interrupt_streaming(&self) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE thread_messages SET state = 'interrupted' WHERE state = 'streaming'",
        )
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(parent: Option<&str>, text: &str) -> NewMessage {
        NewMessage {
            parent_id: parent.map(String::from),
            role: "user".into(),
            content: text.into(),
            model: None,
            sampling: None,
            state: MessageState::Complete,
        }
    }

    #[sqlx::test]
    async fn branches_are_kept_and_the_first_message_names_the_thread(pool: sqlx::SqlitePool) {
        let db = Store::from_pool(pool);
        let t = db.thread_create("", &json!({"model": "m"})).await.unwrap();
        assert_eq!(t.title, UNTITLED);
        let first = db
            .message_add(&t.id, user(None, "Why is the sky blue?"))
            .await
            .unwrap();
        let edited = db
            .message_add(&t.id, user(None, "Why is the sea blue?"))
            .await
            .unwrap();
        let thread = db.thread_get(&t.id).await.unwrap().unwrap();
        assert_eq!(thread.title, "Why is the sky blue?");
        assert_eq!(thread.leaf.as_deref(), Some(edited.id.as_str()));
        let all = db.thread_messages(&t.id).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, first.id);
        let moved = db
            .thread_update(&t.id, None, None, Some(&first.id))
            .await
            .unwrap();
        assert_eq!(moved.unwrap().leaf.as_deref(), Some(first.id.as_str()));
        let foreign = db.message_add(&t.id, user(Some("msg_nope"), "x")).await;
        assert!(matches!(foreign, Err(ThreadError::NoParent(_))));
    }

    #[sqlx::test]
    async fn search_pages_and_delete_with_undo(pool: sqlx::SqlitePool) {
        let db = Store::from_pool(pool);
        let a = db
            .thread_create("Rust lifetimes", &json!({}))
            .await
            .unwrap();
        let b = db.thread_create("", &json!({})).await.unwrap();
        db.message_add(&b.id, user(None, "a recipe with 100% rye"))
            .await
            .unwrap();
        let found = db.threads_list(Some("100%"), None, 10).await.unwrap();
        assert_eq!(found.iter().map(|t| &t.id).collect::<Vec<_>>(), [&b.id]);
        assert!(db
            .threads_list(Some("_"), None, 10)
            .await
            .unwrap()
            .is_empty());
        let page = db.threads_list(None, None, 1).await.unwrap();
        let next = db
            .threads_list(None, Some(page[0].updated_at), 1)
            .await
            .unwrap();
        assert_eq!(page.len() + next.len(), 2);
        assert_ne!(page[0].id, next[0].id);
        assert!(db.thread_set_deleted(&a.id, true).await.unwrap());
        assert!(db.thread_get(&a.id).await.unwrap().is_none());
        assert_eq!(db.threads_list(None, None, 10).await.unwrap().len(), 1);
        assert!(db.thread_set_deleted(&a.id, false).await.unwrap());
        assert!(!db.thread_set_deleted(&a.id, false).await.unwrap());
        assert_eq!(db.threads_list(None, None, 10).await.unwrap().len(), 2);
    }

    #[sqlx::test]
    async fn an_answer_left_streaming_is_interrupted_at_start(pool: sqlx::SqlitePool) {
        let db = Store::from_pool(pool);
        let t = db.thread_create("t", &json!({})).await.unwrap();
        let q = db.message_add(&t.id, user(None, "hi")).await.unwrap();
        let mut answer = user(Some(&q.id), "");
        answer.role = "assistant".into();
        answer.state = MessageState::Streaming;
        let a = db.message_add(&t.id, answer).await.unwrap();
        let so_far = Progress {
            content: "Hel".into(),
            ..Default::default()
        };
        db.message_progress(&a.id, &so_far, MessageState::Streaming)
            .await
            .unwrap();
        assert_eq!(db.messages_interrupt_streaming().await.unwrap(), 1);
        let all = db.thread_messages(&t.id).await.unwrap();
        assert_eq!(
            (all[1].content.as_str(), all[1].state),
            ("Hel", MessageState::Interrupted)
        );
    }

    #[sqlx::test]
    async fn a_compare_is_voted_on_once(pool: sqlx::SqlitePool) {
        let db = Store::from_pool(pool);
        let t = db.thread_create("t", &json!({})).await.unwrap();
        let q = db.message_add(&t.id, user(None, "hi")).await.unwrap();
        let a = db.message_add(&t.id, user(Some(&q.id), "a")).await.unwrap();
        let b = db.message_add(&t.id, user(Some(&q.id), "b")).await.unwrap();
        let marks = [
            (a.id.as_str(), json!({"result": "won"})),
            (b.id.as_str(), json!({"result": "lost"})),
        ];
        assert!(db.messages_vote(&marks).await.unwrap());
        assert!(!db.messages_vote(&marks).await.unwrap());
        let all = db.thread_messages(&t.id).await.unwrap();
        assert_eq!(all[1].vote, Some(json!({"result": "won"})));
        assert_eq!(all[2].vote, Some(json!({"result": "lost"})));
    }

    #[test]
    fn titles_are_a_first_line_cut_at_a_word() {
        assert_eq!(title_of("\n  Hello there \nmore"), "Hello there");
        let long = "word ".repeat(30);
        let t = title_of(&long);
        assert!(t.ends_with('…') && t.chars().count() <= 61, "{t}");
        assert_eq!(title_of("   "), UNTITLED);
    }
}
