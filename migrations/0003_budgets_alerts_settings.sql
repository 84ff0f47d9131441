-- Settings saved from the UI or the API, one JSON document per section (`monitor`, ...).
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT    NOT NULL,  -- JSON
    updated_at INTEGER NOT NULL   -- unix seconds
);

-- A session's own daily token budget; sessions without a row use the default in settings.
CREATE TABLE session_budgets (
    session      TEXT PRIMARY KEY,
    daily_tokens INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- Alerts as they fired and resolved: latency, error rate and budget.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    rule        TEXT    NOT NULL,  -- p95_latency | error_rate | budget_warning | budget_exhausted
    subject     TEXT    NOT NULL,  -- the model or session it is about
    severity    TEXT    NOT NULL,  -- warning | critical
    message     TEXT    NOT NULL,
    value       REAL    NOT NULL,
    threshold   REAL    NOT NULL,
    fired_at    REAL    NOT NULL,  -- unix seconds
    resolved_at REAL
);

CREATE INDEX alerts_by_time ON alerts (fired_at);
