"""Evaluation of a checkpointed model under layer-level emulation, as a ratio to its plain evaluation in the same
run: what one configuration of `boundfinder sweep|sensitivity|search --ckpt` costs over measuring the model.

Each model is trained for a few epochs by a real ``Trainer.fit``, saved as a Lightning checkpoint and loaded back
through ``boundfinder.experiment.load_experiment(ckpt=...)``, as the command line does. Then, in interleaved
rounds, the whole test loader is evaluated per item (the experiment's score, top-1) plainly and under
``emulate(model, FORMAT, level="layer")`` (weights, biases, inputs and activations of every layer), exactly as a
sweep measures one configuration (``search/sweep.py``: ``_measure`` / ``_measure_under``). Each round gives the
emulated time divided by the plain time of the same round; the figure is the median over rounds.

    python benchmarks/bench_checkpoint_eval.py                  # one thread, e8m3 and e4m3fn
    python benchmarks/bench_checkpoint_eval.py --threads 2 --rounds 30 --formats bf16 e5m2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3

# (name, model, data, model arguments): the example transformer (examples/transformer/rows.py) and the built-in
# digits models
MODELS = {
    "row-transformer": ("examples/transformer/rows.py:RowTransformer", "examples/transformer/rows.py:DigitRows",
                        {}),
    "mlp": ("mlp", "digits", {}),
    "lenet": ("lenet", "digits", {}),
}


def checkpoint(name: str, folder: Path, epochs: int):
    """The experiment of ``name`` with its model trained by Trainer.fit and loaded back from the checkpoint."""
    from boundfinder.experiment import load_experiment

    model, data, args = MODELS[name]
    fresh = load_experiment(model=model, data=data, model_args=args)
    net = fresh.build(0)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=folder)
    trainer.fit(net, datamodule=fresh.data)
    path = folder / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    exp = load_experiment(model=model, data=data, model_args=args or None, ckpt=str(path))
    exp.prepare(train=False)
    return exp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--formats", nargs="+", default=["e8m3", "e4m3fn"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the example's file path and its data are named from the repository root
    sys.path.insert(0, str(ROOT))

    from boundfinder.policy import PrecisionPolicy
    from boundfinder.search.sweep import INFERENCE_ROLES, _measure, _measure_under

    cpu = torch.device("cpu")
    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.rounds} rounds, whole test loader per evaluation")
    print(f"{'model':<16} {'params':>7} {'items':>5} {'plain ms':>9} {'format':<8} {'emulated ms':>11} "
          f"{'ratio':>6}  target <= {TARGET}x")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            exp = checkpoint(name, Path(tmp), args.epochs)
            model = exp.model
            policies = {f: PrecisionPolicy.from_spec(f, roles=INFERENCE_ROLES) for f in args.formats}
            # warm-up: compilation and the native extension's first use are not part of an evaluation's cost
            base = _measure(model, exp, cpu)
            for policy in policies.values():
                _measure_under(model, policy, "layer", exp, cpu)
            plain_ms, ratios, emulated_ms = [], {f: [] for f in policies}, {f: [] for f in policies}
            for _ in range(args.rounds):
                t = time.perf_counter()
                _measure(model, exp, cpu)
                plain = time.perf_counter() - t
                plain_ms.append(plain * 1e3)
                for f, policy in policies.items():
                    t = time.perf_counter()
                    _measure_under(model, policy, "layer", exp, cpu)
                    took = time.perf_counter() - t
                    emulated_ms[f].append(took * 1e3)
                    ratios[f].append(took / plain)
            params = sum(p.numel() for p in model.parameters())
            for f in policies:
                ratio = statistics.median(ratios[f])
                print(f"{name:<16} {params:>7} {len(base):>5} {statistics.median(plain_ms):9.2f} {f:<8} "
                      f"{statistics.median(emulated_ms[f]):11.2f} {ratio:6.2f}x {'ok' if ratio <= TARGET else 'over'}")


if __name__ == "__main__":
    main()
