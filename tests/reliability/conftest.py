"""The reliability suite uses the session's fixtures of tests/conftest.py (``stack``, ``tiny_model``, ...).

Every test here stands alone: it computes and asserts its own figures, on its own topics and Redis prefix,
so ``pytest tests/reliability/<file>.py::<test>`` proves what the full run proves. Keep it so: no module-level
counters filled by one test and read by another (tests/test_order_independence.py scans for them).
"""
