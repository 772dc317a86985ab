"""The native rounding extension (``csrc/``): one-pass element-wise rounding of float32 CPU tensors,
straight-through autograd ops that round forward and round the gradient backward, and fused ``nn.Linear``,
``nn.Conv{N}d`` and ``nn.ReLU`` nodes with their layer-level roundings (``round.cpp``); MX blocks
(``blocks.cpp``); per-channel integer affine rows and dynamic fixed point's exponent histogram (``scales.cpp``);
all in C++.

Layer-level emulation calls it for every rounding it can do (:func:`spec`), which keeps a training step free of
Python autograd functions; ``quantize`` calls it for the block, per-channel and dynamic formats of float32 CPU
tensors. It is compiled with ``torch.utils.cpp_extension`` on first use (about a minute, then cached by torch in
``TORCH_EXTENSIONS_DIR``). Where it cannot be built (no C++ compiler, no ninja) or ``BOUNDFINDER_NATIVE=0`` is
set, :func:`load` returns None, one log line says why, and the torch kernels run (same results, slower).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from boundfinder.formats import FloatFormat, Format

__all__ = ["Spec", "load", "spec"]

log = logging.getLogger("boundfinder")

#: Parameters of one rounding as the extension takes them: (kind, truncate, drop, min_normal_word, shift,
#: max_finite, overflow); the empty list rounds nothing (a copy forward, the gradient passed through).
Spec = list[float]

_SOURCES = [str(Path(__file__).with_name("csrc") / name) for name in ("round.cpp", "blocks.cpp", "scales.cpp")]
_FP16 = FloatFormat(exp_bits=5, man_bits=10)
_OVERFLOW = {"inf": 0, "nan": 1, "saturate": 2}
# No -ffast-math (it would reassociate and change results); -fno-trapping-math only lets the loops vectorise
# their selects, -ffp-contract=off keeps x / q and r * q separate operations.
_CFLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"]
# The kernels split large tensors over torch's intra-op threads (at::parallel_for), which with torch's OpenMP
# backend is an OpenMP region compiled into the extension: without -fopenmp it would run on one thread. The
# extension then needs libgomp.so.1, the runtime torch has loaded already (the same soname: one thread pool, and
# torch.set_num_threads applies; see _openmp_available). Where that build fails, or torch runs another OpenMP
# runtime, the extension is built without it (one thread).
_OPENMP = ["-fopenmp"]
_lock = threading.Lock()
_module: Any = None
_tried = False


def enabled() -> bool:
    return os.environ.get("BOUNDFINDER_NATIVE", "1") != "0"


def _openmp_available() -> bool:
    """Whether torch runs GNU OpenMP loaded as ``libgomp.so.1`` (the soname -fopenmp links), so the extension
    shares its runtime; a renamed copy (``libgomp-<hash>.so.1``) or another runtime would make a second one."""
    if not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()):
        return False
    try:
        with open("/proc/self/maps") as maps:
            loaded = {Path(line.split()[-1]).name for line in maps if "libgomp" in line}
    except OSError:
        return False
    return loaded == {"libgomp.so.1"}


def load() -> Any:
    """The compiled extension, or None where it cannot be built or is turned off (said once in a log line)."""
    global _module, _tried
    if _tried:
        return _module
    with _lock:
        if _tried:
            return _module
        if not enabled():
            log.info("boundfinder: native rounding off (BOUNDFINDER_NATIVE=0); emulation uses its Python path")
        else:
            from torch.utils.cpp_extension import load as build

            for flags in ([_OPENMP, []] if _openmp_available() else [[]]):
                # One name per flag set: a process that has loaded another OpenMP runtime (scikit-learn's
                # renamed libgomp, say) builds without -fopenmp, and under one shared name the two builds would
                # replace each other in torch's extension cache, a 60-90 s rebuild at every alternation.
                name = "boundfinder_round_omp" if flags else "boundfinder_round"
                try:
                    _module = build(name=name, sources=_SOURCES,
                                    extra_cflags=_CFLAGS + flags, extra_ldflags=flags, verbose=False)
                    break
                except Exception as exc:  # noqa: BLE001 - any build failure means: no native path, say so once
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    failure = f"{type(exc).__name__}: {first}"
                    _module = None
            if _module is None:
                log.warning("boundfinder: native rounding extension not built (%s); emulation uses its Python "
                            "path (same results, slower)", failure)
        _tried = True
    return _module


def spec(fmt: Format, rounding: str) -> Spec | None:
    """The extension's parameters for rounding float32 to ``fmt`` with ``rounding``, or None if it has none.

    Covered: ``e8m{M}`` with float32's exponent range (IEEE encoding, overflow to inf, subnormals), nearest and
    truncate, as an integer rounding of the float32 word; and nearest for every float format with subnormals
    and at least one mantissa bit whose smallest quantum is a normal float32 (``emin - man_bits >= -126``:
    every format with fewer than 8 exponent bits), in float arithmetic with the format's overflow policy.
    """
    if not isinstance(fmt, FloatFormat) or not fmt.subnormals or rounding not in ("nearest", "truncate"):
        return None
    if fmt.exp_bits == 8 and fmt.bias == 127 and fmt.encoding == "ieee" and fmt.overflow == "inf":
        if fmt.man_bits >= 23:
            return None  # float32 itself: nothing to round
        return [1.0, float(rounding == "truncate"), float(23 - fmt.man_bits), 0.0, 0.0, 0.0, 0.0]
    if rounding != "nearest" or fmt.man_bits < 1 or fmt.emin - fmt.man_bits < -126:
        return None
    min_normal_word = (fmt.emin + 127) << 23
    # fp16 has a hardware conversion on most CPUs (the extension checks, and else rounds as kind 2 does)
    kind = 3.0 if fmt == _FP16 else 2.0
    return [kind, 0.0, 0.0, float(min_normal_word), float(fmt.man_bits << 23), float(fmt.max_finite),
            float(_OVERFLOW[fmt.overflow])]


def all_usable(tensors: list[torch.Tensor]) -> bool:
    """:func:`usable` for each of ``tensors`` (the global conditions checked once)."""
    if torch._C._len_torch_dispatch_stack() != 0 or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    return all((type(x) is torch.Tensor or type(x) is torch.nn.Parameter) and x.dtype is torch.float32
               and x.is_cpu for x in tensors)


def usable(x: torch.Tensor) -> bool:
    """Whether the extension may round ``x``: a plain float32 CPU tensor (or parameter), outside any Python
    dispatch mode (the op level's; fake tensors while compiling) and outside functorch transforms, which the
    extension's direct writes to memory would bypass."""
    return (
        (type(x) is torch.Tensor or type(x) is torch.nn.Parameter)
        and x.dtype is torch.float32
        and x.is_cpu
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._functorch.peek_interpreter_stack() is None
    )
