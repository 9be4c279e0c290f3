-- Resume, retry, regen. Workers announce themselves (a heartbeat), so a live process's run is
-- not trampled; reopened tasks keep their old outputs in `task_history` for audit; and a retried
-- task gets a fresh attempt budget without resetting `attempts`, which stays the lease's
-- fencing token.

CREATE TABLE workers (
    owner        TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
CREATE INDEX workers_by_run ON workers (run_id);

CREATE TABLE task_history (
    id                INTEGER PRIMARY KEY,
    task_id           BIGINT NOT NULL,
    run_id            TEXT NOT NULL,
    sample_id         TEXT NOT NULL,
    stage             TEXT NOT NULL,
    item              BIGINT NOT NULL,
    generation        BIGINT NOT NULL,
    state             TEXT NOT NULL,
    attempts          BIGINT NOT NULL,
    cache_key         TEXT,
    output_json       TEXT,
    output_artifact   TEXT,
    error_class       TEXT,
    error_message     TEXT,
    endpoint          TEXT,
    latency_ms        BIGINT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    finished_at       BIGINT,
    superseded_at     BIGINT NOT NULL,
    why               TEXT NOT NULL           -- stale, retry, regen
);
CREATE INDEX task_history_by_sample ON task_history (sample_id);

ALTER TABLE tasks ADD COLUMN attempt_base BIGINT NOT NULL DEFAULT 0;
