-- The semantic response cache: answers kept with the embedding of the question they answered,
-- looked up by similarity within one scope (the model's weights and every setting but the
-- question). The HNSW index over `vector` lives in a file beside the database and is rebuilt
-- from these rows when it is missing or behind.
CREATE TABLE semantic_answers (
    id         INTEGER PRIMARY KEY,        -- the index's key
    scope      BLOB NOT NULL,              -- sha256 of model, settings and earlier messages
    model      TEXT NOT NULL,
    question   TEXT NOT NULL,
    vector     BLOB NOT NULL,              -- f32 little-endian
    events     TEXT NOT NULL,              -- JSON: each choice's engine events, as replayed
    bytes      INTEGER NOT NULL,
    created_at REAL NOT NULL,
    used_at    REAL NOT NULL,
    hits       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX semantic_answers_used ON semantic_answers (used_at);
