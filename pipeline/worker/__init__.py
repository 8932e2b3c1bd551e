"""The worker process: the faust app, the Kafka batch consumer, the processor it drives, and the process set-up."""
