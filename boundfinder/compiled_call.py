"""Call a torch.compile'd kernel's compiled graph directly, skipping dynamo's per-call wrapper.

A rounding kernel on a few thousand elements runs in ~3 us on CPU, but the call through ``torch.compile``
(frame evaluation, guards, nested disable contexts) costs ~20-25 us more. ``DirectCompiled`` compiles through
dynamo as usual, keeps what Inductor returned for each graph (through AOTAutograd's runtime wrapper), and calls
it directly when the arguments match that graph in every respect dynamo would check for these kernels:

- every argument is a plain ``torch.Tensor`` (not a subclass: no fake or functional tensors while tracing) on
  the CPU, contiguous, not requiring gradients, with the graph's dtypes and numbers of dimensions, and ``x``
  has fewer than 2**31 elements;
- the graph's own shape guards hold (``ShapeEnv.produce_guards_expression`` after compilation, evaluated on
  the sizes: sizes it specialised, sizes tied together by duck shaping, the lower bound of 2 on symbolic
  sizes, and anything the compilation assumed);
- the global state dynamo guards on is the same (grad mode, threads, deterministic algorithms, autocast,
  default dtype), and no torch function mode is active.

A graph with other inputs than ``fn``'s tensor arguments and their sizes (a symbolic integer from a closure,
say: ``kernels`` writes its static arguments into the code as literals, so they are constants), and any
arguments that do not match, go through the compiled function with all of dynamo's guards (which may compile
another graph: it is then kept too). Results are the same either way: it is the same compiled code. GPU tensors
always take dynamo's path (not measured there). ``ENABLED`` (environment ``BOUNDFINDER_DIRECT_CALL=0``) turns
direct calls off.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["DirectCompiled"]

log = logging.getLogger("boundfinder")

# BOUNDFINDER_DIRECT_CALL=0 sends every call through dynamo (the slower, fully guarded path); benchmarks
# compare the two by setting ENABLED.
ENABLED = os.environ.get("BOUNDFINDER_DIRECT_CALL", "1") != "0"

_MAX_NUMEL = 2**31 - 1  # int32 indexing in the compiled code; larger tensors take dynamo's path


def _global_state() -> tuple:
    return (torch.is_grad_enabled(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_autocast_enabled("cpu"), torch._C._is_torch_function_mode_enabled(), torch.get_default_dtype())


class _Graph:
    """One compiled graph: what Inductor returned, how to build its arguments from (x, *tensors), and the shape
    guards of its symbolic sizes (``ShapeEnv.produce_guards_expression``: static sizes, sizes shared between
    tensors by duck shaping, and any relation the compilation assumed)."""

    def __init__(self, compiled: Callable, spec: list[tuple[int, int | None]], guards: str | None,
                 example: tuple[torch.Tensor, ...], state: tuple) -> None:
        self.compiled = compiled
        # per graph input: (argument index, None) for a tensor, (argument index, dim) for one of its sizes
        self.spec = spec
        self.guards = compile(guards, "<shape guards>", "eval") if guards else None
        self.layout = [(t.dtype, t.dim()) for t in example]
        self.state = state

    def inputs(self, args: tuple[torch.Tensor, ...]) -> list | None:
        """The graph's inputs built from ``args``, or None if the graph does not serve them."""
        if len(args) != len(self.layout) or args[0].numel() > _MAX_NUMEL:
            return None
        for t, (dtype, dim) in zip(args, self.layout, strict=True):
            if (type(t) is not torch.Tensor or t.dtype != dtype or t.dim() != dim or t.requires_grad
                    or not t.is_cpu or not t.is_contiguous()):
                return None
        if _global_state() != self.state or torch._C._functorch.peek_interpreter_stack() is not None:
            return None  # (under vmap or grad transforms the tensors are wrapped: dynamo's path)
        inputs = [args[i] if d is None else args[i].shape[d] for i, d in self.spec]
        if self.guards is not None:
            from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

            try:
                if not eval(self.guards, SYMPY_INTERP, {"L": {f"t{k}": v for k, v in enumerate(inputs)}}):
                    return None
            except Exception:  # noqa: BLE001 - a guard that does not apply to these arguments: not this graph's
                return None
        return inputs


def config_patches(example_inputs: list[Any]) -> dict[str, Any]:
    """Inductor's settings for the kernels: the eager kernels' arithmetic, bit for bit. CPU: the minimum parallel
    chunk (see ``DirectCompiled._backend``). CUDA: Triton's ``/`` on float32 is the approximate ``div.full.f32``,
    and Triton contracts a product and a sum into one fused multiply-add; torch's eager CUDA kernels divide
    correctly rounded and round the product. Inductor's eager-numerics settings restore both (``div_rn``, no
    fusion) and keep subnormals in its library calls."""
    patches: dict[str, Any] = {"cpp.min_chunk_size": 1}
    if any(isinstance(t, torch.Tensor) and t.device.type == "cuda" for t in example_inputs):
        patches.update({"eager_numerics.division_rounding": True, "eager_numerics.disable_ftz": True,
                        "emulate_precision_casts": True})
    return patches


class DirectCompiled:
    """``torch.compile(fn, dynamic=True, fullgraph=True)`` of ``fn(x, *tensors)`` returning one tensor, called
    directly once compiled (see the module docstring)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        # graph input sources as dynamo names them: L['a'] for a positional parameter a, L['rest'][k] for the
        # k-th extra argument of *rest; either may be followed by .size()[d]
        code = fn.__code__
        self._positional = code.co_varnames[:code.co_argcount]
        self._varargs = code.co_varnames[code.co_argcount] if code.co_flags & inspect.CO_VARARGS else None
        self._source = re.compile(r"^L\['(\w+)'\](?:\[(\d+)\])?(?:\.size\(\)\[(\d+)\])?$")
        self._graphs: list[_Graph] = []
        # what the backend compiled during this thread's current call (the backend runs in the calling thread;
        # another thread's compilation must not be paired with this call's arguments)
        self._local = threading.local()
        self._compiled = torch.compile(fn, backend=self._backend, dynamic=True, fullgraph=True)

    def _backend(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        # Inductor's CPU code decides between an OpenMP region and a plain loop from the size of the example it
        # compiles on, and the graph is dynamic: a kernel first compiled on a bias of 16 elements would then
        # round every later tensor, however large, on one thread (measured: 0.63x of clone() on 2**24 elements
        # with 2 threads, against 0.91x), in this process and, through Inductor's on-disk cache, in later ones.
        # So the minimum chunk is one element: with more than one thread every kernel gets its parallel region,
        # as one compiled on a large example does; with one thread the code stays a plain loop (dynamo recompiles
        # when the thread count changes: the global state below).
        compiled = compile_fx(gm, example_inputs, config_patches=config_patches(example_inputs))
        spec: list[tuple[int, int | None]] | None = []
        for node in gm.graph.nodes:
            if node.op != "placeholder":
                continue
            source = getattr(node.meta.get("grapharg"), "source", None)
            index = self._argument(source.name) if source is not None else None
            if index is None:
                spec = None  # an input this class does not know how to build: dynamo's path only
                break
            spec.append(index)
        self._local.new = None
        if spec is not None:
            fakes = [node.meta.get("example_value") for node in gm.graph.nodes if node.op == "placeholder"]
            shape_env = getattr(torch._guards.detect_fake_mode(fakes), "shape_env", None)
            try:
                # after compile_fx: the guards Inductor added are in the shape environment too
                guards = shape_env.produce_guards_expression(fakes, ignore_static=False)
            except Exception:  # a guard these placeholders cannot express: dynamo's path only
                log.debug("boundfinder: no shape guards for a direct call", exc_info=True)
            else:
                self._local.new = (compiled, spec, guards)
        return compiled

    def _argument(self, name: str) -> tuple[int, int | None] | None:
        """(argument index, size dimension or None) of a graph input named ``name``; None if it is anything
        else (a closure variable, a global): then the graph is only called through dynamo."""
        m = self._source.match(name)
        if m is None:
            return None
        param, item, dim = m.group(1), m.group(2), m.group(3)
        if item is None and param in self._positional:
            index = self._positional.index(param)
        elif item is not None and param == self._varargs:
            index = len(self._positional) + int(item)
        else:
            return None
        return index, None if dim is None else int(dim)

    def __call__(self, x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        args = (x, *tensors)
        for graph in self._graphs if ENABLED else ():
            inputs = graph.inputs(args)
            if inputs is not None:
                try:
                    return graph.compiled(*inputs)[0]
                except Exception:  # never expected; dynamo's path below decides for itself
                    log.debug("boundfinder: a direct call of a compiled graph failed; no longer used",
                              exc_info=True)
                    self._graphs.remove(graph)
                    break
        self._local.new = None
        state = _global_state()
        out = self._compiled(x, *tensors)
        new, self._local.new = getattr(self._local, "new", None), None
        if new is not None:  # this call compiled a graph for these arguments: keep it for the next ones
            compiled, spec, guards = new
            graph = _Graph(compiled, spec, guards, args, state)
            if graph.inputs(args) is not None:
                self._graphs.append(graph)
        return out
