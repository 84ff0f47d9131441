-- Drift probes: per model, a fixed probe set answered greedily; the first run is the baseline
-- later runs are compared with (similarity of answers, length, refusal rate).
CREATE TABLE drift_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    model          TEXT NOT NULL,
    weights_sha256 TEXT,
    ran_at         REAL NOT NULL,
    answers        TEXT NOT NULL,       -- JSON: [{prompt, answer, tokens, refused}]
    similarity     REAL,                -- mean cosine to the baseline's answers (null: baseline)
    length_ratio   REAL,                -- mean tokens over the baseline's (null: baseline)
    refusal_rate   REAL NOT NULL,
    drifted        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX drift_runs_model ON drift_runs (model, ran_at);

-- Answers' consistency per session: each answer's length and its similarity to the session's
-- earlier answers (the running mean of their embeddings, kept in session_centroids).
CREATE TABLE answer_points (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session    TEXT NOT NULL,
    model      TEXT NOT NULL,
    at         REAL NOT NULL,
    tokens     INTEGER NOT NULL,
    similarity REAL
);
CREATE INDEX answer_points_session ON answer_points (session, at);

CREATE TABLE session_centroids (
    session TEXT PRIMARY KEY,
    vector  BLOB NOT NULL,
    n       INTEGER NOT NULL
);
