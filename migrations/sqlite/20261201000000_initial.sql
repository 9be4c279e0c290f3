-- edir-synth store, SQLite. Timestamps are milliseconds since the Unix epoch (BIGINT) and ids
-- TEXT or INTEGER, so the SQLite and Postgres schemas stay column-for-column the same.

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,          -- uuid v7
    name          TEXT NOT NULL UNIQUE,
    pipeline_yaml TEXT NOT NULL,             -- as given
    pipeline_hash TEXT NOT NULL,             -- canonical hash of the validated pipeline
    state         TEXT NOT NULL,             -- running, finished, interrupted
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE samples (
    id            TEXT PRIMARY KEY,          -- uuid v7
    run_id        TEXT NOT NULL REFERENCES runs (id),
    subcategory   TEXT NOT NULL,
    ordinal       BIGINT NOT NULL,           -- n-th sample drawn for this subcategory
    generation    BIGINT NOT NULL DEFAULT 0, -- bumped by regen; older generations are superseded
    reference     TEXT NOT NULL,             -- artifact hash of the reference image
    reference_name TEXT NOT NULL,            -- source file name or manifest id
    seed          BIGINT NOT NULL,
    state         TEXT NOT NULL,             -- active, accepted, rejected, failed, superseded
    decided_stage TEXT,
    reason        TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (run_id, subcategory, ordinal, generation)
);
CREATE INDEX samples_by_run_state ON samples (run_id, subcategory, state);

CREATE TABLE tasks (
    id                INTEGER PRIMARY KEY,
    run_id            TEXT NOT NULL REFERENCES runs (id),
    sample_id         TEXT NOT NULL REFERENCES samples (id),
    stage             TEXT NOT NULL,
    item              BIGINT NOT NULL DEFAULT 0,   -- index within a fan-out stage
    state             TEXT NOT NULL,               -- blocked, ready, leased, done, failed, skipped
    deps_pending      BIGINT NOT NULL,             -- unfinished dependencies; 0 means ready
    attempts          BIGINT NOT NULL DEFAULT 0,   -- claims so far; also the lease's fencing token
    not_before        BIGINT NOT NULL DEFAULT 0,   -- back-off: not claimable before this time
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    cache_key         TEXT,
    output_json       TEXT,
    output_artifact   TEXT,
    error_class       TEXT,
    error_message     TEXT,
    endpoint          TEXT,
    latency_ms        BIGINT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    UNIQUE (sample_id, stage, item)
);
CREATE INDEX tasks_claimable ON tasks (run_id, stage, state, not_before);
CREATE INDEX tasks_by_sample ON tasks (sample_id);

CREATE TABLE task_deps (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    dep_id  BIGINT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (dep_id, task_id)
);

CREATE TABLE artifacts (
    hash       TEXT PRIMARY KEY,             -- BLAKE3, hex
    size       BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    sample_id TEXT,
    task_id   BIGINT,
    detail    TEXT
);
CREATE INDEX events_by_run ON events (run_id, id);

CREATE TABLE embeddings (
    model       TEXT NOT NULL,
    instruction TEXT NOT NULL,               -- hash of the instruction text
    input_hash  TEXT NOT NULL,               -- hash of the image and text embedded
    dim         BIGINT NOT NULL,
    vector      BLOB NOT NULL,               -- little-endian f32
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (model, instruction, input_hash)
);
