-- Level 2 of the embedding cache: one vector per model, weights file and input, kept across
-- restarts. The input is identified by the token ids the model saw (sha256 of them as u32 LE),
-- so texts that tokenize alike share a vector and a token-id input hits its text's entry.
CREATE TABLE embedding_cache (
    model        TEXT    NOT NULL,
    model_sha256 TEXT    NOT NULL,
    input_sha256 BLOB    NOT NULL,
    vector       BLOB    NOT NULL,  -- f32 little-endian
    created_at   INTEGER NOT NULL,  -- unix seconds
    last_used_at INTEGER NOT NULL,
    PRIMARY KEY (model, model_sha256, input_sha256)
) WITHOUT ROWID;

-- Eviction takes the least recently used first.
CREATE INDEX embedding_cache_by_last_use ON embedding_cache (last_used_at);
