-- Claims walk the ready tasks of one stage in id order; expired leases are put back to
-- `ready` by the engine's periodic reclaim, so the claim never scans finished tasks.
DROP INDEX IF EXISTS tasks_claimable;
CREATE INDEX tasks_ready ON tasks (run_id, stage, state, id);
