"""boundfinder against QPyTorch (``pip install qtorch``, 0.3.0; its C++ kernels build on first import): the same
rounding, item for item, and what each costs, measured side by side in the same rounds.

    python benchmarks/qtorch_compare.py

1. Rounding 2**20 float32 values (normal, times 2**k for k uniform in [-40, 40], zeros and a few infinities) to
   e8m{2, 7, 10} with round-to-nearest-even and (QPyTorch has none for floats) no truncation:
   ``qtorch.quant.float_quantize(x, exp=8, man=m, rounding="nearest")`` against
   ``boundfinder.quantize(x, "e8m{m}")``: how many results differ, and the time of each (median of 15 rounds,
   interleaved).
2. A training step of the built-in MLP (2 hidden layers of 128, batch 128, SGD with momentum) in float32, under
   boundfinder's layer level (``emulate(model, e8m7, level="layer")``: every layer's weight, bias, input and
   output, and the gradients, rounded), and under QPyTorch's idiom for the same format (a ``Quantizer`` after
   every Linear for activations and errors, ``OptimLP`` rounding weights and gradients at the step): the ratio of
   each to float32 in the same round, median of 15 rounds. The two round different sets of tensors (QPyTorch does
   not round a layer's input or its weight as used, boundfinder does not round the stored weight after the step
   at the layer level), so the ratio compares two ways of emulating e8m7 training, not identical work.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch

from boundfinder import quantize
from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy
from boundfinder.profile import _cost_model


def _time(fn, n: int = 5) -> float:
    t = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        t.append(time.perf_counter() - start)
    return statistics.median(t)


def rounding_table(rounds: int = 15) -> list[str]:
    import qtorch.quant as qq

    gen = torch.Generator().manual_seed(0)
    n = 1 << 20
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-40, 41, (n,), generator=gen).float())
    x[:1000] = 0.0
    x[1000:1010] = float("inf")
    lines = ["| format | differ (of 2^20) | QPyTorch ms | boundfinder ms | boundfinder / QPyTorch |",
             "|---|---:|---:|---:|---:|"]
    for man in (2, 7, 10):
        ours = quantize(x, f"e8m{man}")
        theirs = qq.float_quantize(x, exp=8, man=man, rounding="nearest")
        same = (ours == theirs) | (torch.isnan(ours) & torch.isnan(theirs))
        ratios, t_q, t_b = [], [], []
        for _ in range(rounds):
            a = _time(lambda man=man: qq.float_quantize(x, exp=8, man=man, rounding="nearest"))
            b = _time(lambda man=man: quantize(x, f"e8m{man}"))
            t_q.append(a)
            t_b.append(b)
            ratios.append(b / a)
        lines.append(f"| e8m{man} | {int((~same).sum())} | {statistics.median(t_q) * 1e3:.2f} | "
                     f"{statistics.median(t_b) * 1e3:.2f} | {statistics.median(ratios):.2f}x |")
    return lines


def training_table(rounds: int = 15, steps: int = 10) -> list[str]:
    import qtorch
    import qtorch.optim
    import qtorch.quant as qq

    torch.manual_seed(0)
    base = _cost_model("mlp", 2, 128)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    number = qtorch.FloatingPoint(exp=8, man=7)

    def setup(kind: str):
        import copy

        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        handle = None
        if kind == "boundfinder":
            handle = emulate(model, PrecisionPolicy.from_spec("e8m7"), level="layer")
        elif kind == "qtorch":
            quant = qq.Quantizer(forward_number=number, backward_number=number, forward_rounding="nearest",
                                 backward_rounding="nearest")
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.register_forward_hook(lambda _m, _i, out: quant(out))

            def rnd(t):
                return qq.float_quantize(t, exp=8, man=7, rounding="nearest")

            opt = qtorch.optim.OptimLP(opt, weight_quant=rnd, grad_quant=rnd)

        def step() -> None:
            for _ in range(steps):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

        return step, handle

    configs = {k: setup(k) for k in ("fp32", "boundfinder", "qtorch")}
    for step, _ in configs.values():
        step()  # warm-up
    ratios: dict[str, list[float]] = {k: [] for k in configs}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        t = {k: _time(step, 3) / steps for k, (step, _) in configs.items()}
        for k in configs:
            times[k].append(t[k])
            ratios[k].append(t[k] / t["fp32"])
    for _, handle in configs.values():
        if handle is not None:
            handle.remove()
    lines = ["| training step (MLP 2x128, batch 128) | ms | ratio to fp32 |", "|---|---:|---:|"]
    for k, label in (("fp32", "float32"), ("boundfinder", "boundfinder, layer level, e8m7"),
                     ("qtorch", "QPyTorch Quantizer + OptimLP, e8m7")):
        lines.append(f"| {label} | {statistics.median(times[k]) * 1e3:.3f} | {statistics.median(ratios[k]):.2f}x |")
    return lines


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    lines = [*rounding_table(), "", *training_table()]
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, 1 thread; took {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
