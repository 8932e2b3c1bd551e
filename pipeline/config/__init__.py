"""Configuration: the settings (env vars), the retention policy file and the Kafka client settings shared by
several places."""
