"""Routers of the operator API (assembled by :func:`alerts.api.create_app`).

- :mod:`.deps`     the shared state (:class:`~.deps.ApiContext`) and the bearer-token identity;
- :mod:`.pages`    the web page and ``/api/whoami``;
- :mod:`.health`   ``/livez``, ``/health`` and ``/metrics``;
- :mod:`.cameras`  cameras and their heatmap overlays, read from the detector's Redis cache;
- :mod:`.alerts`   alerts, their frames, acknowledgements and the history;
- :mod:`.refusals` promoted models the detectors refuse (the page's banner).
"""
