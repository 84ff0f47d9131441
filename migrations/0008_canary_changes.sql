-- Every change of a canary release's share (started, stepped up, promoted, rolled back), with
-- its reason; the last row is where the canary stands after a restart.
CREATE TABLE canary_changes (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    at            REAL    NOT NULL,
    share         REAL    NOT NULL,
    status        TEXT    NOT NULL,  -- running | promoted | rolled_back
    reason        TEXT    NOT NULL
);
CREATE INDEX canary_changes_by_experiment ON canary_changes (experiment_id, id);
