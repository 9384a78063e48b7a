"""Test helpers shared across suites (importable because tests/ is on sys.path via tests/conftest.py)."""
