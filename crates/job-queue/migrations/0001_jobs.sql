-- Jobs are the queue: a job is committed here before the API acknowledges it, and workers
-- claim it with FOR UPDATE SKIP LOCKED, so the job and its queue state can never disagree.
CREATE TABLE jobs (
    id              UUID PRIMARY KEY,
    seq             BIGSERIAL NOT NULL UNIQUE,          -- creation order, for cursor paging
    kind            TEXT NOT NULL,
    payload         JSONB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    idempotency_key TEXT UNIQUE,
    request_hash    TEXT,                               -- what the key was first used for
    result          JSONB,
    last_error      TEXT,
    run_at          TIMESTAMPTZ NOT NULL DEFAULT now(), -- not before (retry backoff)
    lease_token     UUID,                               -- the claim that may record a result
    lease_until     TIMESTAMPTZ,                        -- visibility timeout
    completions     INTEGER NOT NULL DEFAULT 0,         -- results recorded: must end at 1
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at    TIMESTAMPTZ
);

CREATE INDEX jobs_ready ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_by_status ON jobs (status, seq);
