-- Exactly-once on retries: when a write's acknowledgement is lost (timeout, dropped connection), the
-- worker retries it with the same insert_deduplication_token, and the table drops the repeated block.
-- Non-replicated MergeTree tables remember tokens only with this window (Replicated tables always
-- deduplicate, by token or by block checksum, within replicated_deduplication_window).
ALTER TABLE {db}.request_logs {on_cluster} MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.monitoring_samples {on_cluster} MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE {db}.dead_letters {on_cluster} MODIFY SETTING non_replicated_deduplication_window = 1000;
