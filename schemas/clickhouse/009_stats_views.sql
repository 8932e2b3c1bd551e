-- interface_stats_1m is written by the store itself: each insert into a raw table folds its own block
-- into the per-minute aggregate, in the same statement (a materialized view per raw table). Before
-- this migration the worker ran a separate INSERT ... SELECT per flush; the view does the same work
-- without a second statement and a second read of the block (docs/performance.md), and removes a step
-- from the delivery protocol (pipeline/sinks/writer.py).
-- Exactly-once: a retried insert carries its first attempt's insert_deduplication_token. The raw table
-- drops the repeated block, but ClickHouse still runs the view on it; the view's block inherits a
-- token derived from the insert's, so the aggregate table needs a deduplication window too, or a lost
-- acknowledgement would count the block twice (tests/integration/test_stats_views.py).
-- Upgrading: stop every worker older than this migration before applying it; an older worker still
-- runs its own per-flush aggregate, and with the views both would fold the same rows.
-- The SELECTs come from pipeline/schema/aggregates.py, which the crash recovery uses to rebuild minutes.
ALTER TABLE {db}.interface_stats_1m {on_cluster} MODIFY SETTING non_replicated_deduplication_window = 1000;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.request_logs_stats {on_cluster} TO {db}.interface_stats_1m AS
{stats_of_request_logs};
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.monitoring_samples_stats {on_cluster} TO {db}.interface_stats_1m AS
{stats_of_monitoring_samples};
