"""The pipeline's monitoring: Prometheus metrics and SLIs, and the dashboards and alert rules generated from code."""
