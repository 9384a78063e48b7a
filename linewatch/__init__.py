"""linewatch: cameras -> Kafka -> STFPM anomaly detection -> Redis heatmaps -> alerts.

The import names live under this one namespace. The repository keeps one top-level folder per
layer (ingest/, detector/, alerts/, deploy/); ``linewatch/<layer>`` are links to those folders, so
``linewatch.ingest`` is the code in ingest/. Dependencies flow one way, like the data:
common <- ingest <- detector <- alerts <- deploy (tests/test_architecture.py enforces it).
"""
