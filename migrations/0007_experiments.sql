-- The lab's experiments: their definition, one row per prompt and variant (a run resumes by
-- skipping the rows already here), and blind pairwise votes.
CREATE TABLE experiments (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at REAL    NOT NULL,
    spec       TEXT    NOT NULL  -- JSON (lab::experiments::ExperimentSpec)
);

CREATE TABLE experiment_rows (
    experiment_id INTEGER NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    prompt_index  INTEGER NOT NULL,
    variant       TEXT    NOT NULL,
    row           TEXT    NOT NULL,  -- JSON (lab::experiments::Row)
    PRIMARY KEY (experiment_id, prompt_index, variant)
);

CREATE TABLE experiment_votes (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    created_at    REAL    NOT NULL,
    vote          TEXT    NOT NULL   -- JSON (lab::experiments::Vote)
);
