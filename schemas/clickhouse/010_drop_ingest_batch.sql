-- The raw tables lose ingest_batch (the id of the flush that wrote a row) and its skip index. They
-- served the worker's per-flush aggregate (INSERT ... SELECT ... WHERE ingest_batch = X), which 009's
-- views replaced: since then nothing reads them, and every insert still paid for them. Without them
-- chDB's insert of workload b costs ~3-4% less (docs/performance.md), and the worker no longer builds,
-- compresses and sends 8 bytes a row of one repeated number. When, and by which insert, a row was
-- written is still in ingest_time (one value per insert); dead_letters keeps its own ingest_batch.
-- Upgrading: a worker older than this names the column in its inserts, which would then fail. Stop
-- every older worker before applying it, then roll out (docs/deploy.md); a newer worker refuses to
-- start until it is applied.
ALTER TABLE {db}.request_logs {on_cluster} DROP INDEX IF EXISTS idx_ingest_batch;
ALTER TABLE {db}.request_logs {on_cluster} DROP COLUMN IF EXISTS ingest_batch;
ALTER TABLE {db}.monitoring_samples {on_cluster} DROP INDEX IF EXISTS idx_ingest_batch;
ALTER TABLE {db}.monitoring_samples {on_cluster} DROP COLUMN IF EXISTS ingest_batch;
