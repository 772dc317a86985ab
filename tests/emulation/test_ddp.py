"""DistributedDataParallel over layer-level emulation: two CPU processes, gloo on 127.0.0.1 (issue 23, item 7).

DDP keeps one module per process, so the emulation of each rank is an ordinary single-process emulation; what
DDP adds is the gradient allreduce. The semantics tested here, bit for bit:

- each rank's backward rounds its own parameter gradients per the ``weight_grad`` role (layer.py: in the weight
  group's backward, or in place after accumulation for parameters outside a group), so each rank's
  contribution is on the format's grid;
- DDP then averages those contributions in float32: its reducer copies ``grad * (1 / world_size)`` into the
  bucket and allreduces by sum. With two ranks this is ``fl(g0 * 0.5 + g1 * 0.5)``: halving is exact (no
  float32 underflow at these magnitudes) and a sum of two terms does not depend on the order, so the result is
  the same on both ranks and equal to a single-process reference that computes both ranks' emulated gradients
  one after the other and averages them the same way. The average is generally *not* on the format's grid
  (asserted below): emulation models a low-precision gradient per worker with a float32 allreduce, not a
  rounded allreduce.

The workers are this file run as a script (``python test_ddp.py ddp RANK PORT DIR`` and ``python test_ddp.py
lightning DIR``): a script is importable in a fresh process whatever pytest's import mode, and Lightning's
``ddp`` strategy relaunches its own script for rank 1, which it cannot do with pytest as the script. Inputs
(initial weights, per-rank batches) go to the workers, and results come back, as files in ``tmp_path``; every
wait is bounded, and a timeout kills the workers' process group so that a hang fails the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from boundfinder.emulation import emulate
from boundfinder.policy import PrecisionPolicy
from boundfinder.quantize import quantize

WORLD = 2
STEPS = 4
BATCH = 8
LR, MOMENTUM = 0.1, 0.9
# seconds for a whole worker run: a normal one takes 5-20 s on 2 idle cores; the margin is for a loaded machine
TIMEOUT = 180.0

# name -> (format, roles (None: every role), emulate before or after wrapping in DDP, step at which the
# emulation is removed (None: never)).
# "e8m3": every role, so the parameters form one weight group whose backward rounds their gradients (the native
#   node where the extension is built). "e5m4-grads": weight_grad without a weight format, so the gradient is
#   rounded in place by a post-accumulate-grad hook, which must run before DDP's reducer reads it; applied to
#   ddp.module after wrapping, as the Lightning callback does. "e8m3-removed": after remove() the DDP-wrapped
#   model trains as a plain one.
CASES = {
    "e8m3": ("e8m3", None, "before", None),
    "e5m4-grads": ("e5m4", ("activation", "grad_output", "grad_input", "weight_grad"), "after", None),
    "e8m3-removed": ("e8m3", None, "before", 2),
}

requires_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def make_net() -> nn.Module:
    """Native fused layers (Conv2d, ReLU, Linear) and hooks' path layers (MaxPool2d, Flatten, Tanh)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10),
    )  # fmt: skip


def make_policy(case: str) -> PrecisionPolicy:
    fmt, roles, _, _ = CASES[case]
    return PrecisionPolicy.from_spec(fmt, rounding="nearest", roles=roles)


def leftovers(model: nn.Module) -> list[str]:
    """What is left on the submodules: hooks, or an instance ``forward`` (the fused layers' bound forward)."""
    left = []
    for name, m in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            left += [f"{name or '<root>'}.{kind}: {h!r}" for h in getattr(m, kind).values()]
        if "forward" in m.__dict__:
            left.append(f"{name or '<root>'}.forward: {m.__dict__['forward']!r}")
    return left


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a reader never sees a half-written file


# -- workers (run as a script) -----------------------------------------------------------------------------------
def ddp_worker(rank: int, port: int, folder: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    setup = torch.load(folder / "setup.pt", weights_only=True)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    results = {}
    for case, (_, _, order, remove_at) in CASES.items():
        net = make_net()
        net.load_state_dict(setup["init"])
        em = emulate(net, make_policy(case), level="layer") if order == "before" else None
        model = DDP(net)
        if order == "after":
            em = emulate(model.module, make_policy(case), level="layer")
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        params, grads = [], []
        for step in range(STEPS):
            if step == remove_at:
                em.remove()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(setup["x"][rank, step]), setup["y"][rank, step]).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
            opt.step()
            params.append([p.detach().clone() for p in net.parameters()])
        results[case] = {"params": params, "grads": grads, "left": leftovers(net) if remove_at is not None else None}
        em.remove()
    _save(results, folder / f"ddp{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def lightning_worker(folder: Path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader, TensorDataset

    from boundfinder.callbacks import PrecisionEmulation

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()
            self.seen: list[torch.Tensor] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].clone())
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

        def train_dataloader(self):
            # each rank its own batches, in order (Lightning's own DistributedSampler would shuffle them)
            rank = self.global_rank
            return DataLoader(TensorDataset(setup["x"][rank].flatten(0, 1), setup["y"][rank].flatten(0, 1)),
                              batch_size=BATCH)

    torch.set_num_threads(1)
    setup = torch.load(folder / "setup.pt", weights_only=True)
    module = Net()
    module.net.load_state_dict(setup["init"])
    trainer = pl.Trainer(
        accelerator="cpu", devices=WORLD, strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
        callbacks=[PrecisionEmulation("e8m3", level="layer")],
    )  # fmt: skip
    trainer.fit(module)
    rank = trainer.global_rank
    # module.net: Lightning's forward redirection leaves the LightningModule's own bound forward on the instance
    _save({"params": [p.detach().clone() for p in module.net.parameters()], "left": leftovers(module.net),
           "steps": trainer.global_step, "seen": module.seen}, folder / f"lightning{rank}.pt")
    if rank == 0:  # rank 1 is rank 0's child: wait for its result so that the test can read both
        deadline = time.monotonic() + 60
        while not (folder / "lightning1.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


# -- the test side ---------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", BOUNDFINDER_TEST_WORKER="1")
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's default device follows the host name; stay local
    return env


def _run(commands: list[list[str]], folder: Path) -> None:
    """Start the commands, each in its own process group, and wait for all of them, bounded by TIMEOUT."""
    procs = [
        subprocess.Popen([sys.executable, __file__, *cmd], env=_env(), cwd=folder, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for cmd in commands
    ]
    deadline = time.monotonic() + TIMEOUT
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            with_group_killed(proc)
        pytest.fail(f"the workers did not finish within {TIMEOUT} s: {commands}")
    for proc in procs:  # Lightning's rank 1 is in rank 0's process group
        with_group_killed(proc)
    failed = [(cmd, proc.returncode, out) for cmd, proc, out in zip(commands, procs, outputs, strict=True)
              if proc.returncode != 0]
    assert not failed, "\n\n".join(f"{cmd}: exit {rc}\n{out[-6000:]}" for cmd, rc, out in failed)


def with_group_killed(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def one_thread():
    """The workers compute with one thread; so does the reference (its sums are then in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def setup(tmp_path):
    """Initial weights and rank-specific batches, written for the workers; seeds fixed here. The native
    extension is loaded first, so that a build (about a minute, after a change to csrc/) happens here and not
    in the workers' bounded time."""
    from boundfinder import native

    native.load()
    g = torch.Generator().manual_seed(23)
    torch.manual_seed(7)
    data = {
        "init": make_net().state_dict(),
        "x": torch.randn(WORLD, STEPS, BATCH, 1, 8, 8, generator=g),
        "y": torch.randint(0, 10, (WORLD, STEPS, BATCH), generator=g),
    }
    torch.save(data, tmp_path / "setup.pt")
    return data


def reference(setup, case: str | None) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Parameters and gradients after each step, in one process: each rank's gradient computed separately under
    emulation (``case``; None: no emulation), then averaged as DDP does (``g * 0.5`` per rank, summed)."""
    net = make_net()
    net.load_state_dict(setup["init"])
    em = emulate(net, make_policy(case), level="layer") if case is not None else None
    remove_at = CASES[case][3] if case is not None else None
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    params, grads = [], []
    for step in range(STEPS):
        if step == remove_at:
            em.remove()
        per_rank = []
        for rank in range(WORLD):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(setup["x"][rank, step]), setup["y"][rank, step]).backward()
            per_rank.append([p.grad for p in net.parameters()])
        for p, g0, g1 in zip(net.parameters(), *per_rank, strict=True):
            p.grad = g0.mul(1.0 / WORLD) + g1.mul(1.0 / WORLD)
        grads.append([p.grad.clone() for p in net.parameters()])
        opt.step()
        params.append([p.detach().clone() for p in net.parameters()])
    if em is not None:
        em.remove()
    return params, grads


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


@requires_gloo
def test_ddp_trains_like_the_averaged_emulated_reference(tmp_path, setup, one_thread):
    """Every case of CASES: each rank's gradient and parameters after every step equal the reference's."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    _run([["ddp", str(rank), str(server.port), str(tmp_path)] for rank in range(WORLD)], tmp_path)
    ranks = [torch.load(tmp_path / f"ddp{rank}.pt", weights_only=True) for rank in range(WORLD)]
    plain_params, _ = reference(setup, None)
    for case in CASES:
        params, grads = reference(setup, case)
        # the test can fail: emulation changes the trajectory, and the averaged gradient is off the grid
        assert not _equal(params[-1], plain_params[-1]), case
        fmt = CASES[case][0]
        assert any(not torch.equal(quantize(g, fmt), g) for g in grads[0]), case
        for rank, result in enumerate(ranks):
            for step in range(STEPS):
                assert _equal(result[case]["grads"][step], grads[step]), (case, rank, step, "gradient")
                assert _equal(result[case]["params"][step], params[step]), (case, rank, step, "parameters")
        for step in range(STEPS):  # implied by the above; stated because it is the property DDP relies on
            assert _equal(ranks[0][case]["params"][step], ranks[1][case]["params"][step]), (case, step)
        if CASES[case][3] is not None:
            assert ranks[0][case]["left"] == ranks[1][case]["left"] == [], case
    # after remove(), the DDP-wrapped model trains exactly as plain float32 from the emulated state: its last
    # steps differ from training emulated throughout
    assert not _equal(reference(setup, "e8m3")[0][-1], ranks[0]["e8m3-removed"]["params"][-1])


@requires_gloo
@pytest.mark.slow
def test_lightning_ddp_with_precision_emulation(tmp_path, setup, one_thread):
    """PrecisionEmulation under Trainer(strategy=DDPStrategy(process_group_backend="gloo"), devices=2): the
    callback attaches in on_fit_start, after Lightning wrapped the module in DDP; both ranks end on the same
    parameters as the plain-PyTorch reference, and teardown leaves the layers as they were."""
    pytest.importorskip("lightning")
    _run([["lightning", str(tmp_path)]], tmp_path)
    ranks = [torch.load(tmp_path / f"lightning{rank}.pt", weights_only=True) for rank in range(WORLD)]
    params, _ = reference(setup, "e8m3")
    plain_params, _ = reference(setup, None)
    assert not _equal(params[-1], plain_params[-1])
    for rank, result in enumerate(ranks):
        assert result["steps"] == STEPS, rank
        assert torch.equal(torch.stack(result["seen"]), setup["x"][rank]), rank  # its own batches, in order
        assert _equal(result["params"], params[-1]), rank
        assert result["left"] == [], rank  # the callback's teardown removed the emulation on every rank


if __name__ == "__main__" and os.environ.get("BOUNDFINDER_TEST_WORKER") == "1":
    if sys.argv[1] == "ddp":
        ddp_worker(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        lightning_worker(Path(sys.argv[2]))
