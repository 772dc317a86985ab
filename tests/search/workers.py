"""A search worker run as a separate process by the distributed-search tests.

``python -m tests.search.workers STORAGE STUDY TRIALS SEED [--slow]``: a small search on digits with a short
heartbeat. ``--slow`` makes every evaluation batch sleep, so a test can kill the worker in the middle of a trial.
"""

from __future__ import annotations

import sys
import time

from boundfinder.data import DigitsDataModule
from boundfinder.models import MLP

SLEEP_PER_BATCH = 0.3
HEARTBEAT = 1.0
GRACE = 2.0


class SlowMLP(MLP):
    """The same network as ``MLP(hidden=(16,))``; with ``slow`` set, evaluation sleeps on each batch."""

    slow = False

    def forward(self, x):
        if self.slow and not self.training:
            time.sleep(SLEEP_PER_BATCH)
        return super().forward(x)


def build() -> MLP:
    return SlowMLP(hidden=(16,), lr=0.05, momentum=0.9)


def search(storage, study, trials, seed, **kw):
    from boundfinder.search.study import precision_search

    return precision_search(build, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", range(0, 5), seeds=(0,),
                            epochs=2, n_trials=trials, storage=storage, study_name=study, sampler_seed=seed,
                            heartbeat_interval=HEARTBEAT, grace_period=GRACE, model_name="mlp16", **kw)


if __name__ == "__main__":
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, study, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    SlowMLP.slow = "--slow" in sys.argv
    result = search(storage, study, trials, seed)
    print(f"worker {seed}: {result.n_complete} complete")
