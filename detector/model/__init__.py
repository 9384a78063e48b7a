"""The model: the STFPM network, its checkpoint and metadata, calibration, the one inference path, exports and
the runtimes that run them (``backends``); ``training`` makes checkpoints. Imports nothing at package level, so
``linewatch.detector.model.training.recipes`` and the metadata stay light."""
