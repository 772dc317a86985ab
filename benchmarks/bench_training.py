"""Training-step time under precision emulation, as a ratio to plain training measured in the same run.

For the digits CNN (LeNet-style, 1x8x8 inputs) and an MLP (64-128-64-10): forward + cross-entropy + backward +
SGD step, plain vs each emulation level (batch, layer, op) with e5m10 and e4m3fn. Configurations are
interleaved in rounds; each round gives each configuration's median step time divided by plain's in the same
round, and the figure is the median of those ratios (drift on a shared machine between rounds cancels out).
``batch`` rounds the parameters only (the parameter-server setting), ``batch+state`` also the optimizer
state (SGD momentum).

    python benchmarks/bench_training.py                       # CPU (and CUDA when available)
    python benchmarks/bench_training.py --batch-size 256 --rounds 30 --device cpu
    python benchmarks/bench_training.py --device cpu --models mlp --levels layer \
        --formats fixed16.8 e4m3fn:stochastic bf16:stochastic        # formats that go through quantize

Optionally a QPyTorch (``qtorch``) Quantizer-based equivalent of the layer level is measured beside it when
``qtorch`` imports (its CPU kernels are compiled on first use; pass --no-qtorch to skip).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy

TARGETS = {"batch": 1.05, "batch+state": 1.05, "layer": 1.3, "op": 3.0}


def make_lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def model_factories() -> tuple[dict, str]:
    """boundfinder.models' LightningModules when present (same architectures), else plain equivalents."""
    try:
        from boundfinder.models import MLP, LeNet
    except ImportError:
        return {"lenet": make_lenet, "mlp": make_mlp}, "plain nn.Module equivalents (boundfinder.models absent)"
    return {"lenet": LeNet, "mlp": lambda: MLP(hidden=(128, 64))}, "boundfinder.models.LeNet / MLP(hidden=(128, 64))"


def digits(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:batch_size], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target[:batch_size], dtype=torch.int64)
    return x.to(device), y.to(device)


class QtorchLayer:
    """QPyTorch equivalent of the layer level: a Quantizer module after every layer (activations forward,
    gradients backward) and weights rounded with qtorch's float_quantize around the forward."""

    def __init__(self, model: nn.Module, exp: int, man: int) -> None:
        from qtorch import FloatingPoint
        from qtorch.quant import Quantizer, float_quantize

        fmt = FloatingPoint(exp=exp, man=man)
        self.quant = Quantizer(forward_number=fmt, backward_number=fmt, forward_rounding="nearest",
                               backward_rounding="nearest")
        self.float_quantize = float_quantize
        self.exp, self.man = exp, man
        self.model = model
        self.handles = [m.register_forward_hook(lambda mod, a, out: self.quant(out))
                        for m in model.modules() if not list(m.children())]

    def round_weights(self) -> None:
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(self.float_quantize(p, self.exp, self.man, "nearest"))


def time_steps(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, em=None, op: bool = False, after=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if op:
            with em.op_context():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
        else:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        opt.step()
        if em is not None:
            em.after_optimizer_step(opt)
        if after is not None:
            after()
        sync()

    return step


def bench(device: torch.device, args) -> list[tuple[str, str, str, float, float]]:
    x, y = digits(args.batch_size, device)
    factories, _ = model_factories()
    rows = []
    for model_name, factory in factories.items():
        if model_name not in args.models:
            continue
        configs: dict[str, tuple] = {}
        torch.manual_seed(0)
        plain = factory().to(device)
        configs["plain"] = (make_step(plain, x, y), None)
        for spec in args.formats:
            fmt, _, rounding = spec.partition(":")
            for level in args.levels:
                torch.manual_seed(0)
                m = factory().to(device)
                # batch: the parameter-server setting (parameters only); batch+state: optimizer state too
                roles = ("weight", "bias") if level == "batch" else None
                policy = PrecisionPolicy.from_spec(fmt, roles=roles, rounding=rounding or "nearest")
                em = emulate(m, policy, level=level.split("+")[0])
                configs[f"{level}/{spec}"] = (make_step(m, x, y, em, op=(level == "op")), em)
            if args.qtorch and device.type == "cpu" and spec in ("e5m10", "e4m3fn") and "layer" in args.levels:
                try:
                    torch.manual_seed(0)
                    m = factory().to(device)
                    q = QtorchLayer(m, *{"e5m10": (5, 10), "e4m3fn": (4, 3)}[fmt])
                    configs[f"qtorch-layer/{fmt}"] = (make_step(m, x, y, after=q.round_weights), None)
                except (ImportError, RuntimeError, OSError) as exc:  # not installed, or its extension does not build
                    if fmt == "e5m10":
                        print(f"# qtorch not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        samples: dict[str, list[float]] = {k: [] for k in configs}
        ratios: dict[str, list[float]] = {k: [] for k in configs}
        for step, _ in configs.values():
            time_steps(step, args.warmup)
        for _ in range(args.rounds):
            medians = {}
            for name, (step, _) in configs.items():
                times = time_steps(step, args.steps)
                samples[name].extend(times)
                medians[name] = statistics.median(times)
            # paired within the round: load from other processes changes between rounds, not within one
            for name in configs:
                ratios[name].append(medians[name] / medians["plain"])
        for name in configs:
            level, _, fmt = name.partition("/")
            rows.append((model_name, level, fmt or "-", statistics.median(samples[name]) * 1e3,
                         statistics.median(ratios[name])))
        for _, em in configs.values():
            if em is not None:
                em.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="steps per configuration per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadiest figures)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--no-qtorch", dest="qtorch", action="store_false")
    parser.add_argument("--models", nargs="+", default=["lenet", "mlp"], choices=["lenet", "mlp"])
    parser.add_argument("--levels", nargs="+", default=["batch", "batch+state", "layer", "op"],
                        choices=["batch", "batch+state", "layer", "op"])
    parser.add_argument("--formats", nargs="+", default=["e5m10", "e4m3fn"],
                        help="format names, optionally with a rounding mode: fixed16.8 e4m3fn:stochastic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads={args.threads}, batch={args.batch_size}, "
          f"{args.rounds}x{args.steps} steps per configuration; models: {model_factories()[1]}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"\n## {name}\n")
        print("| model | level | format | step ms | ratio to plain | target |")
        print("|---|---|---|---:|---:|---:|")
        for model, level, fmt, ms, ratio in bench(device, args):
            target = TARGETS.get(level)
            mark = "" if target is None else f"<= {target}" + (" ok" if ratio <= target else " MISSED")
            print(f"| {model} | {level} | {fmt} | {ms:.3f} | {ratio:.2f}x | {mark} |")


if __name__ == "__main__":
    main()
