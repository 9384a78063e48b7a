"""linewatch: cameras -> Kafka -> STFPM anomaly detection -> Redis heatmaps -> alerts.

The import names live under this one namespace. The repository keeps one top-level folder per
layer (common/, ingest/, detector/, health/, plant/, alerts/, deploy/); ``linewatch/<layer>`` are links to
those folders, so ``linewatch.ingest`` is the code in ingest/. Dependencies flow one way, like the data:
common <- ingest <- detector <- (health, plant) <- alerts <- deploy (tests/test_architecture.py enforces it).
"""

import os

# torch's OpenMP threads spin-wait at barriers by default. With other processes on the same cores
# (cameras, decoders, a second detector) that collapses throughput: measured on a shared 2-core CPU,
# training fell from ~50 to 1 image/s and a model at batch 8 ran 1.3 frames/s instead of 17. Passive
# waiting costs little on an idle machine. Set before torch (and its libgomp) loads; the environment
# can still choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
