-- Benchmark runs: one row per finished run, the whole result as JSON beside the columns that
-- the history is listed and compared by.
CREATE TABLE bench_runs (
    id           INTEGER PRIMARY KEY,
    finished_at  REAL    NOT NULL,  -- unix seconds
    model        TEXT    NOT NULL,
    quantization TEXT    NOT NULL,
    device       TEXT    NOT NULL,
    software     TEXT    NOT NULL,
    result       TEXT    NOT NULL   -- JSON (devices::bench::BenchResult)
);

CREATE INDEX bench_runs_by_time ON bench_runs (finished_at);
