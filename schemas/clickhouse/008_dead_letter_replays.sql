-- Dead-letter ledger: the app a dead letter belongs to (its Kafka key, the sdk_app_id; 0 when the key
-- names none) and how many times the record had been replayed when it failed (0: a first failure).
-- `imtel deadletters list` counts by app; a record replayed and refused again has one more row with
-- the same source coordinates and a higher replay_count (pipeline/ingest/replay.py).
ALTER TABLE {db}.dead_letters {on_cluster} ADD COLUMN IF NOT EXISTS sdk_app_id UInt32 DEFAULT 0;
ALTER TABLE {db}.dead_letters {on_cluster} ADD COLUMN IF NOT EXISTS replay_count UInt8 DEFAULT 0;
