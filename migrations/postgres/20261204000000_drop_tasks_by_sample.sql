-- `tasks_by_sample` (sample_id) repeats the first column of the UNIQUE (sample_id, stage, item)
-- index, which serves every lookup by sample; dropping it saves an index entry per task.
DROP INDEX IF EXISTS tasks_by_sample;
