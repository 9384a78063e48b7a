"""linewatch: cameras -> Kafka -> STFPM anomaly detection -> Redis heatmaps -> alerts.

The import names live under this one namespace. The repository keeps one top-level folder per
layer (common/, ingest/, detector/, health/, plant/, alerts/, deploy/); ``linewatch/<layer>`` are links to
those folders, so ``linewatch.ingest`` is the code in ingest/. Dependencies flow one way, like the data:
common <- ingest <- detector <- (health, plant) <- alerts <- deploy (tests/test_architecture.py enforces it).
"""

import os

# Passive OpenMP waiting (docs/decisions/0004-omp-wait-policy-passive.md): set before torch (and its libgomp)
# loads; the environment may still choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
