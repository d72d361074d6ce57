-- A task per source shard of each job: the unit a worker leases and runs. The status
-- columns hold what the task's owner last reported, so that any worker shows every shard.
-- job_leases stays: per job, the turn to discover the source's shards (owner = the worker
-- that last did, expires_at = when the next discovery is due).
CREATE TABLE job_tasks (
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    shard TEXT NOT NULL,
    owner TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0,
    state TEXT,
    node TEXT,
    outcome TEXT,
    error TEXT,
    figures TEXT,
    retired BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard)
)
