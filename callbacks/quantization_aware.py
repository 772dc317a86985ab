"""``QuantizationAware``: fake-quantized training (integer affine, or BinaryNet's binarization)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from boundfinder.callbacks._common import (
    STAGES,
    AttachAtEntryPoints,
    check_rounding,
    check_stages,
    log,
    spec_repr,
    trainer_stage,
)
from boundfinder.errors import PolicyError
from boundfinder.formats import BinaryFormat, Format, IntFormat, parse_format
from boundfinder.policy import PrecisionPolicy, Rule
from boundfinder.quantize import affine_qparams, fake_quantize_affine, quantize_ste

__all__ = ["QuantizationAware"]

#: Layer types quantized when no ``layers`` patterns are given: the ones whose weights multiply inputs.
QUANTIZED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def _check_format(name: str, value: Any, binary_ok: bool) -> Format | None:
    if value is None:
        return None
    fmt = parse_format(value)  # raises FormatError with the list of names
    if isinstance(fmt, IntFormat) or (binary_ok and isinstance(fmt, BinaryFormat)):
        return fmt
    allowed = "an integer format (int8, uint8, int4, int8_sym, int8_ch0, ...)"
    if binary_ok:
        allowed += " or a binary format ('binary', 'binary_mean')"
    raise PolicyError(
        f"`{name}` must be {allowed} or None, but got {name}={value!r} ({type(fmt).__name__}). "
        "HINT: float, fixed-point and block formats are emulated by PrecisionEmulation."
    )


def _minmax(x: torch.Tensor, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (0-d) or per-channel (1-d along ``fmt.axis``) min and max."""
    if fmt.axis is None:
        return torch.aminmax(x.detach())
    rows = x.detach().movedim(fmt.axis, 0).reshape(x.shape[fmt.axis], -1)
    return torch.aminmax(rows, dim=1)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: the core's fake_quantize_affine. Backward: straight through where x lies inside the
    quantization range, zero where it was clipped (the STE of torch.ao's FakeQuantize)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, fmt, rounding):
        out = fake_quantize_affine(x, scale, zero_point, fmt, rounding)
        ctx.save_for_backward(x, scale, zero_point)
        ctx.fmt = fmt
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale, zp = ctx.saved_tensors
        fmt = ctx.fmt
        scale, zp = scale.to(torch.float32), zp.to(torch.float32)
        if fmt.axis is not None and scale.dim() == 1:
            shape = [1] * x.dim()
            shape[fmt.axis] = -1
            scale, zp = scale.view(shape), zp.view(shape)
        # Half a step of slack on both ends: values that round to qmin or qmax are inside the range.
        lo = (fmt.qmin - zp - 0.5) * scale
        hi = (fmt.qmax - zp + 0.5) * scale
        inside = (x >= lo) & (x <= hi)
        return grad * inside.to(grad.dtype), None, None, None, None


class _GradFakeQuant(torch.autograd.Function):
    """Identity forward; backward fake-quantizes the incoming gradient with its own min/max range."""

    @staticmethod
    def forward(ctx, x, fmt, rounding):
        ctx.fmt, ctx.rounding = fmt, rounding
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        lo, hi = _minmax(grad, ctx.fmt)
        scale, zp = affine_qparams(lo, hi, ctx.fmt)
        return fake_quantize_affine(grad, scale, zp, ctx.fmt, ctx.rounding), None, None


class QuantizationAware(AttachAtEntryPoints, Callback):
    """Fake-quantize the input, the weight and the output gradient of each Linear/Conv layer during training.

    This is the study's 8-bit CNN (integer input, weight and output gradient) and, with binary formats,
    BinaryNet (Courbariaux et al. 2016): sign weights and activations in the forward pass, the clipped
    straight-through estimator in the backward, real-valued latent weights clipped to [-1, 1] after each
    optimizer step.

    Args:
        weights: integer format (e.g. ``"int8"``, ``"int8_sym"``, per-channel ``"int8_ch0"``), ``"binary"`` or
            None. Integer weights use the min/max of the current weight (torch.ao's weight observer).
        activations: format of each quantized layer's input (integer, ``"binary"`` or None). Integer inputs
            use a running min/max observer (moving average with ``averaging_constant``, as torch.ao's
            MovingAverageMinMaxObserver), updated in training mode and frozen in eval mode once calibrated.
        gradients: integer format of the gradient with respect to each layer's output, calibrated on that
            gradient's own min/max; or None. Binary gradients are rejected (a sign is no usable gradient).
        layers: module-name patterns selecting the layers; only Linear and Conv layers among them are
            quantized. None: every Linear and Conv layer.
        quantize_first_input: whether the first quantized layer's input (the data) is quantized too. None:
            yes for integer activations, no for binary ones (BinaryNet keeps the real-valued input image).
        clip_latent_weights: clip the weights of quantized layers to [-1, 1] after each optimizer step.
            None: when ``weights`` is binary.
        averaging_constant: moving-average constant of the activation observers, in (0, 1].
        rounding: rounding mode of every fake quantization.
        stages: Trainer entry points to quantize in (``"fit"`` includes its validation loop).

    The observers are the callback's state: saved in checkpoints as plain floats and restored on resume; they
    are kept after ``fit`` so that a following ``trainer.test`` runs with the calibrated ranges.

    >>> qat = QuantizationAware(weights="int8", activations="uint8", gradients="int8")
    >>> str(qat.weights), str(qat.activations), str(qat.gradients)
    ('int8', 'uint8', 'int8')
    >>> QuantizationAware.binary().weights
    BinaryFormat(scale='none', axis=None)
    """

    def __init__(
        self,
        weights: Any = "int8",
        activations: Any = "uint8",
        gradients: Any = "int8",
        *,
        layers: Sequence[str] | None = None,
        quantize_first_input: bool | None = None,
        clip_latent_weights: bool | None = None,
        averaging_constant: float = 0.01,
        rounding: str = "nearest",
        stages: Iterable[str] = STAGES,
    ) -> None:
        super().__init__()
        self.weights = _check_format("weights", weights, binary_ok=True)
        self.activations = _check_format("activations", activations, binary_ok=True)
        self.gradients = _check_format("gradients", gradients, binary_ok=False)
        if getattr(self.activations, "axis", None) is not None:
            raise PolicyError(
                f"`activations` are calibrated per tensor by a running observer, but got the per-channel format "
                f"{self.activations}; use e.g. 'uint8' or 'int8'."
            )
        if self.weights is None and self.activations is None and self.gradients is None:
            raise PolicyError(
                "QuantizationAware needs at least one of `weights`, `activations`, `gradients`, but all are None."
            )
        if layers is not None:
            if isinstance(layers, str):
                layers = (layers,)
            layers = tuple(layers)
            if not layers or not all(isinstance(p, str) and p for p in layers):
                raise PolicyError(
                    f"`layers` must be None or a non-empty sequence of module-name patterns, but got {layers!r}."
                )
        self.layers = layers
        binary_acts = isinstance(self.activations, BinaryFormat)
        self.quantize_first_input = (not binary_acts) if quantize_first_input is None else bool(quantize_first_input)
        binary_weights = isinstance(self.weights, BinaryFormat)
        self.clip_latent_weights = binary_weights if clip_latent_weights is None else bool(clip_latent_weights)
        if not (isinstance(averaging_constant, (int, float)) and 0 < averaging_constant <= 1):
            raise PolicyError(f"`0 < averaging_constant <= 1` must hold, but got {averaging_constant=!r}.")
        self.averaging_constant = float(averaging_constant)
        self.rounding = check_rounding(rounding)
        if (binary_acts or binary_weights) and rounding not in ("nearest", "stochastic"):
            raise PolicyError(
                "binary formats round by sign ('nearest') or stochastically ('stochastic'), "
                f"but got rounding={rounding!r}."
            )
        self.stages = check_stages(stages)
        # The role formats as a policy: checks each format against its role (PolicyError otherwise) and, in
        # setup, the patterns against the model with the model's layer names in the message.
        formats = {
            role: fmt
            for role, fmt in (("weight", self.weights), ("input", self.activations), ("grad_output", self.gradients))
            if fmt is not None
        }
        # Without patterns one rule selects every layer; _select keeps the Linear/Conv ones.
        patterns = (None,) if layers is None else layers
        rules = tuple(Rule(pattern=p, formats=formats) for p in patterns)
        self._policy = PrecisionPolicy(rules=rules, rounding=rounding)
        self._observers: dict[str, list[torch.Tensor]] = {}  # layer name -> [min, max] of its inputs
        self._pending: dict[str, list[float]] | None = None  # observers loaded before the hooks exist
        self._hooks: list[Any] = []
        self._called: set[str] = set()  # layers whose forward ran since attach (see _check_called)
        self._checked = False
        self._layers: dict[str, nn.Module] = {}

    @classmethod
    def binary(cls, **kwargs: Any) -> QuantizationAware:
        """BinaryNet: ``weights="binary", activations="binary", gradients=None`` (other arguments as given)."""
        return cls(weights="binary", activations="binary", gradients=None, **kwargs)

    # -- identity and state -------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            weights=spec_repr(self.weights),
            activations=spec_repr(self.activations),
            gradients=spec_repr(self.gradients),
            layers=self.layers,
        )

    def state_dict(self) -> dict[str, Any]:
        observers = dict(self._pending or {})  # restored from a checkpoint but not yet on the model
        observers.update({name: [float(v) for v in mm] for name, mm in self._observers.items()})
        return {"observers": observers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        observers = state_dict.get("observers", {})
        self._pending = {str(k): [float(v[0]), float(v[1])] for k, v in observers.items()}
        if self._layers:
            self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        for name, (lo, hi) in self._pending.items():
            module = self._layers.get(name)
            device = module.weight.device if module is not None else torch.device("cpu")
            self._observers[name] = [torch.tensor(lo, device=device), torch.tensor(hi, device=device)]
        self._pending = None

    # -- which layers -------------------------------------------------------------------------------------
    def _select(self, model: nn.Module) -> dict[str, nn.Module]:
        plan = self._policy.resolve(model)  # PolicyError names the modules if a pattern matches none
        modules = dict(model.named_modules())
        selected = {name: modules[name] for name in plan if isinstance(modules[name], QUANTIZED_TYPES)}
        if not selected:
            candidates = [f"{n} ({type(m).__name__})" for n, m in modules.items() if isinstance(m, QUANTIZED_TYPES)]
            raise PolicyError(
                f"QuantizationAware quantizes Linear and Conv layers, but layers={self.layers!r} selects none of "
                f"{type(model).__name__}'s; its Linear/Conv layers are: {', '.join(candidates) or '(none)'}."
            )
        return selected

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self.stages:
            self._select(pl_module)

    # -- hooks ----------------------------------------------------------------------------------------------
    def _attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = trainer_stage(trainer)
        if stage not in self.stages or self._hooks:
            return
        self._layers = self._select(pl_module)
        self._apply_pending()
        for i, (name, module) in enumerate(self._layers.items()):
            quantize_input = self.activations is not None and (i > 0 or self.quantize_first_input)
            self._hooks.append(module.register_forward_pre_hook(self._pre_hook(name, quantize_input)))
            self._hooks.append(module.register_forward_hook(self._post_hook(), always_call=True))
        if stage == "fit" and self.clip_latent_weights:
            for optimizer in trainer.optimizers:
                self._hooks.append(optimizer.register_step_post_hook(self._clip_weights))
        log.info("QuantizationAware: %d layers quantized for %s", len(self._layers), stage)

    def _observe(self, name: str, x: torch.Tensor, update: bool) -> list[torch.Tensor]:
        state = self._observers.get(name)
        if state is not None and state[0].device != x.device:
            state = self._observers[name] = [v.to(x.device) for v in state]
        if state is not None and not update:
            return state
        with torch.no_grad():
            lo, hi = torch.aminmax(x.detach().to(torch.float32))
            if state is None:
                state = self._observers[name] = [lo, hi]
            else:
                c = self.averaging_constant
                state[0] = state[0] + c * (lo - state[0])
                state[1] = state[1] + c * (hi - state[1])
        return state

    def _quantize(self, x: torch.Tensor, fmt: Format, minmax: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(fmt, BinaryFormat):
            return quantize_ste(x, fmt, self.rounding)
        assert isinstance(fmt, IntFormat)  # guaranteed by _check_format
        scale, zp = affine_qparams(minmax[0], minmax[1], fmt)
        return _FakeQuantSTE.apply(x, scale, zp, fmt, self.rounding)

    def _pre_hook(self, name: str, quantize_input: bool):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            self._called.add(name)
            if quantize_input and args and torch.is_tensor(args[0]) and args[0].is_floating_point():
                x = args[0]
                minmax = None
                if isinstance(self.activations, IntFormat):
                    minmax = self._observe(name, x, update=module.training)
                args = (self._quantize(x, self.activations, minmax), *args[1:])
            if self.weights is not None:
                w = module._parameters["weight"]  # the latent parameter, never a leftover shadow
                minmax = _minmax(w, self.weights) if isinstance(self.weights, IntFormat) else None
                # Shadow the parameter for this forward only: the instance __dict__ wins over nn.Module's
                # __getattr__, so forward() reads the quantized tensor while parameters(), the optimizer and
                # state_dict() keep the real-valued latent weight. The forward hook removes the shadow.
                module.__dict__["weight"] = self._quantize(w, self.weights, minmax)
            return args

        return hook

    def _post_hook(self):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            module.__dict__.pop("weight", None)
            if self.gradients is not None and torch.is_tensor(output) and output.requires_grad:
                return _GradFakeQuant.apply(output, self.gradients, self.rounding)
            return None

        return hook

    def _clip_weights(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for module in self._layers.values():
                module._parameters["weight"].clamp_(-1.0, 1.0)

    def _check_called(self) -> None:
        """After the first batch: name the selected layers whose forward never ran. A parent module may use
        a child's weight directly (``nn.MultiheadAttention`` passes ``out_proj.weight`` to a functional call),
        so that layer's hooks never fire and it is not quantized; say so once rather than fail silently."""
        if self._checked or not self._layers:
            return
        self._checked = True
        missed = [name for name in self._layers if name not in self._called]
        if missed:
            rank_zero_warn(
                f"QuantizationAware: the forward of {missed} did not run in the first batch, so these layers "
                "are not quantized (a parent module may use their weights directly, as nn.MultiheadAttention "
                "does with out_proj). Exclude them with `layers=` patterns to silence this."
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check_called()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._check_called()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._check_called()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._check_called()

    def _detach(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()
        for module in self._layers.values():
            module.__dict__.pop("weight", None)  # a forward that raised left its shadow behind
        self._layers = {}
        self._called = set()
        self._checked = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()
