-- The request log: one row per finished request (answered, failed, cancelled or timed out),
-- written by monitor/ off the request path. Times in milliseconds, `finished_at` in unix seconds.
CREATE TABLE requests (
    id                INTEGER PRIMARY KEY,
    finished_at       REAL    NOT NULL,
    session           TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    api               TEXT    NOT NULL,  -- chat | completions | embeddings
    status            INTEGER NOT NULL,  -- HTTP status the client got (499: it went away)
    outcome           TEXT    NOT NULL,  -- ok | error | cancelled | timeout
    error_kind        TEXT,
    prompt_tokens     INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    queue_ms          REAL,
    ttft_ms           REAL,
    total_ms          REAL    NOT NULL,
    tokens_per_second REAL,
    response_cached   INTEGER NOT NULL
);

CREATE INDEX requests_by_session ON requests (session, finished_at);
CREATE INDEX requests_by_time ON requests (finished_at);
