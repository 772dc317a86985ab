"""What a configuration costs: bits per parameter, bit-operations, memory.

A search compares configurations by a cost. Besides the mean bits per parameter, hardware people ask for:

- **bit-operations** (BOPs): for each layer, weight bits x activation bits x multiply-accumulates, summed (the
  cost model of mixed-precision search papers and AIMET's BOP-based AMP); MACs are counted from one forward
  pass of an example batch, per item;
- **memory**: weights at their widths plus every layer's output activations at their widths, in bytes per item.

:func:`layer_profile` measures a model once (parameters, MACs and output elements per layer); :class:`CostModel`
then prices any assignment of widths to layers without running the model again.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> prof = layer_profile(model, torch.zeros(3, 4))
>>> prof["0"].macs, prof["2"].macs, prof["1"].macs
(32, 16, 0)
>>> cm = CostModel(prof)
>>> cm.bit_operations({"0": (8, 8), "2": (4, 8)})  # 32 * 64 + 16 * 32
2560.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from boundfinder.errors import BoundfinderError
from boundfinder.policy import layer_modules

__all__ = ["COSTS", "CostModel", "LayerCost", "layer_profile"]

COSTS = ("bits", "bops", "memory")
_FULL = 32.0  # float32: the width of whatever a configuration leaves unrounded


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One layer, measured on one forward pass, per item of the batch."""

    params: int  # elements of the layer's own parameters
    macs: int  # multiply-accumulates of its products (0 for element-wise layers)
    outputs: int  # elements of its floating-point outputs


def _macs(module: nn.Module, args: tuple, out: object, batch: int) -> int:
    """Multiply-accumulates of one call, per item (products only; additions of biases, norms and activations are
    not counted, as in the BOP literature)."""
    if isinstance(module, nn.Linear):
        return module.in_features * out.numel() // batch  # type: ignore[union-attr]
    if isinstance(module, nn.Bilinear):
        return module.in1_features * module.in2_features * out.numel() // batch  # type: ignore[union-attr]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return per_output * out.numel() // batch  # type: ignore[union-attr]
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        x = args[0]
        per_input = (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return per_input * x.numel() // batch
    if isinstance(module, nn.MultiheadAttention):
        q, k = args[0], args[1]
        e = module.embed_dim
        lq = q.numel() // (batch * e)  # query positions per item
        lk = k.numel() // (batch * module.kdim)
        projections = lq * e * e + lk * (module.kdim + module.vdim) * e + lq * e * e  # q, k and v, output
        attention = 2 * lq * lk * e  # q k^T and the weighted sum of v, over every head
        return projections + attention
    return 0


def layer_profile(model: nn.Module, example: object = None, *, batch_size: int | None = None,
                  run: Callable[[nn.Module], object] | None = None) -> dict[str, LayerCost]:
    """Parameters, MACs and output elements of each layer (:func:`~boundfinder.policy.layer_modules`) for one
    item, from one forward pass of ``example`` (a batch: a tensor, or a tuple / dict of arguments) in eval mode
    without gradients; or ``run(model)``, any call that runs the model on one batch (e.g. a score function on a
    loader's batch; ``batch_size`` is then required). ``batch_size``: items in the batch (default: the first
    dimension of ``example``'s first tensor). A layer called several times in a forward counts every call."""
    if run is not None and (example is not None or batch_size is None):
        raise BoundfinderError("layer_profile takes either an example batch or run= with its batch_size.")
    leaves = [t for t in tree_flatten(example)[0] if isinstance(t, torch.Tensor)]
    if batch_size is None:
        if not leaves or leaves[0].dim() == 0:
            raise BoundfinderError("layer_profile needs an example batch with a batch dimension (or batch_size=).")
        batch_size = int(leaves[0].shape[0])
    layers = layer_modules(model)
    macs = dict.fromkeys(layers, 0)
    outputs = dict.fromkeys(layers, 0)
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: object) -> None:
            first = tree_flatten(out)[0]
            macs[name] += _macs(module, args, first[0] if first else out, batch_size)
            outputs[name] += sum(t.numel() for t in first if isinstance(t, torch.Tensor) and t.is_floating_point()
                                 ) // batch_size

        return record

    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(hook(name)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if run is not None:
                    run(model)
                elif isinstance(example, Mapping):
                    model(**example)
                elif isinstance(example, tuple):
                    model(*example)
                else:
                    model(example)
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return {name: LayerCost(params=sum(p.numel() for p in module.parameters(recurse=False)), macs=macs[name],
                            outputs=outputs[name]) for name, module in layers.items()}


class CostModel:
    """Prices widths per layer with a measured :func:`layer_profile`. Widths are ``{layer: (weight bits,
    activation bits)}``; a layer left out stays at 32 bits (float32) for both."""

    def __init__(self, profile: Mapping[str, LayerCost]) -> None:
        if not profile:
            raise BoundfinderError("a cost model needs the profile of at least one layer.")
        self.profile = dict(profile)

    def _widths(self, widths: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        unknown = sorted(set(widths) - set(self.profile))
        if unknown:
            raise BoundfinderError(f"widths name layers the model does not have: {unknown}; its layers are "
                                   f"{sorted(self.profile)}.")
        return {name: tuple(widths.get(name, (_FULL, _FULL))) for name in self.profile}

    def bits_per_parameter(self, widths: Mapping[str, tuple[float, float]]) -> float:
        """Mean weight bits per parameter."""
        w = self._widths(widths)
        total = sum(c.params for c in self.profile.values())
        return sum(w[n][0] * c.params for n, c in self.profile.items()) / max(total, 1)

    def bit_operations(self, widths: Mapping[str, tuple[float, float]]) -> float:
        """Sum over layers of weight bits x input activation bits x MACs, per item. A layer's activation width is
        taken as the width of what it multiplies (its input's format under the layer level's roles)."""
        w = self._widths(widths)
        return float(sum(w[n][0] * w[n][1] * c.macs for n, c in self.profile.items()))

    def memory_bytes(self, widths: Mapping[str, tuple[float, float]]) -> float:
        """Weights at their widths plus every layer's outputs at its activation width, in bytes per item."""
        w = self._widths(widths)
        return sum((w[n][0] * c.params + w[n][1] * c.outputs) / 8.0 for n, c in self.profile.items())

    def cost(self, kind: str, widths: Mapping[str, tuple[float, float]]) -> float:
        """The cost ``kind`` (one of :data:`COSTS`) of ``widths``."""
        if kind == "bits":
            return self.bits_per_parameter(widths)
        if kind == "bops":
            return self.bit_operations(widths)
        if kind == "memory":
            return self.memory_bytes(widths)
        raise BoundfinderError(f"cost must be one of {', '.join(COSTS)}, got {kind!r}.")
