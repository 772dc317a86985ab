"""A search worker run as a separate process by the distributed-search tests.

``python -m tests.search.workers STORAGE STUDY TRIALS SEED [--slow=SECONDS] [--no-confirm]``: a small search on
digits with a short heartbeat. ``--slow`` makes every evaluation batch sleep, so that trials overlap and a test
can kill the worker in the middle of one.
"""

from __future__ import annotations

import sys
import time

from boundfinder.data import DigitsDataModule
from boundfinder.models import MLP

HEARTBEAT = 1.0
# SQLite stores heartbeat times to the second: a grace of several heartbeats keeps a busy live worker from
# looking dead
GRACE = 5.0


class SlowMLP(MLP):
    """The same network as ``MLP(hidden=(16,))``; with ``slow`` set, evaluation sleeps on each batch."""

    slow = 0.0  # seconds per evaluation batch

    def forward(self, x):
        if self.slow and not self.training:
            time.sleep(self.slow)
        return super().forward(x)


def build() -> MLP:
    return SlowMLP(hidden=(16,), lr=0.05, momentum=0.9)


def search(storage, study, trials, seed, bits=range(2, 9), **kw):
    """The storage and worker mechanics are tested with the sampler alone (``trials`` is then exactly the number of
    configurations), certified on a fresh model by the fixed sequence; the default strategy, claim and procedure
    have tests of their own (tests/search/test_strategies.py)."""
    from boundfinder.search.study import precision_search

    kw = {"strategy": "tpe", "claim": "training", "procedure": "fixed_cost"} | kw
    return precision_search(build, DigitsDataModule(batch_size=128, seed=0), "e8m{b}", bits, seeds=(0,),
                            epochs=2, n_trials=trials, storage=storage, study_name=study, sampler_seed=seed,
                            heartbeat_interval=HEARTBEAT, grace_period=GRACE, model_name="mlp16", **kw)


if __name__ == "__main__":
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, study, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    SlowMLP.slow = next((float(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--slow=")), 0.0)
    result = search(storage, study, trials, seed, confirm="--no-confirm" not in sys.argv)
    print(f"worker {seed}: {result.n_complete} complete")
