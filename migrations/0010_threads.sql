-- The Chat page's threads, kept by the server so the desktop window and a browser on the same
-- server see one history. Messages form a tree (`parent_id`): an edited message or a regenerated
-- answer is a sibling, so earlier branches are kept; `leaf` is the branch the thread shows.
CREATE TABLE threads (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    settings   TEXT NOT NULL DEFAULT '{}',  -- JSON: the side panel (model, system, sampling, ...)
    leaf       TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL                         -- set by a delete, cleared by its undo
);
CREATE INDEX threads_updated ON threads (deleted_at, updated_at);

CREATE TABLE thread_messages (
    id         TEXT PRIMARY KEY,
    thread_id  TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    parent_id  TEXT,
    seq        INTEGER NOT NULL,            -- creation order within the thread
    role       TEXT NOT NULL,               -- user | assistant
    content    TEXT NOT NULL,
    reasoning  TEXT NOT NULL DEFAULT '',
    model      TEXT,
    sampling   TEXT,                        -- JSON: the request's settings, as sent
    figures    TEXT,                        -- JSON: tokens, TTFT, tok/s
    state      TEXT NOT NULL,               -- complete | streaming | interrupted | error
    error      TEXT,
    vote       TEXT,                        -- JSON: a compare's vote (experiment, won/lost/tie)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX thread_messages_thread ON thread_messages (thread_id, seq);
