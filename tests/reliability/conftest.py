"""The reliability suite uses the session's fixtures of tests/conftest.py (``stack``, ``tiny_model``, ...)."""
