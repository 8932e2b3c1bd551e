"""Development and demo tools, never imported by the product: embedded mode, the local Kafka node, ``imtel
engine``, the traffic generator and the benchmark."""
