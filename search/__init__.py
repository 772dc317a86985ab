"""Sensitivity sweeps and Optuna studies over per-layer precision (``boundfinder.search``)."""
