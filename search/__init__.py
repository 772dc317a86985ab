"""Sensitivity sweeps and Optuna studies over per-layer precision (``boundfinder.search``).

* :func:`~boundfinder.search.sweep.precision_sweep`: one format family's bit widths on the whole model (or a layer
  pattern), measured per test item, read by ``estimate_bound``;
* :func:`~boundfinder.search.sensitivity.precision_sensitivity`: the minimum safe bits of each role of each layer
  alone, with confidence intervals that hold for the whole table at once;
* :func:`~boundfinder.search.study.precision_search`: per-layer bit widths searched with Optuna on validation items,
  the cheapest safe configuration certified on test items; many workers can share one storage
  (:func:`~boundfinder.search.storage.open_storage`).

Each takes the user's experiment (:class:`boundfinder.experiment.Experiment`: a model factory or a trained model,
any LightningDataModule, a per-item score, Trainer settings), or a model and a DataModule directly.

The Optuna-based modules import Optuna when used (the ``search`` extra); the sweep and the sensitivity analysis do not
need it.
"""
