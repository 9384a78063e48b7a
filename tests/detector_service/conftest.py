"""The detector service tests use the session's fixtures of tests/conftest.py (``stack``, ``tiny_model``, ...)."""
