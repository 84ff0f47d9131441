-- The lab's quality measurements: a variant against a reference on a prompt set.
CREATE TABLE quality_runs (
    id          INTEGER PRIMARY KEY,
    finished_at REAL NOT NULL,  -- unix seconds
    reference   TEXT NOT NULL,
    variant     TEXT NOT NULL,
    prompt_set  TEXT NOT NULL,
    report      TEXT NOT NULL   -- JSON (lab::quality::QualityReport)
);

CREATE INDEX quality_runs_by_variant ON quality_runs (variant, finished_at);
