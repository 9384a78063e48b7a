"""Offline evaluation of a checkpoint: metrics (AUROC, AUPRO), the HTML report, ``predict`` and ``bench``."""
