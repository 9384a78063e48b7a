"""Model lifecycle on a running line: registry, promotions, audit trail, operator feedback, shadow replay.

- :mod:`.settings`  ``LINEWATCH_REGISTRY__*`` (database URL, model-file store, audit retention);
- :mod:`.db`        SQLAlchemy 2 tables and the engine (SQLite by default, PostgreSQL in production);
- :mod:`.store`     content-addressed model-file store (a folder);
- :mod:`.models`    register / list / show / promote / rollback;
- :mod:`.audit`     one row per scored frame, written by a consumer of the ``results`` topic;
- :mod:`.feedback`  operators' "false alarm" / "real defect" marks and their export as a data set;
- :mod:`.shadow`    score a candidate against the active version on replayed frames.

See README.md for the design, including the hot-swap hook the detector service still needs.
"""
