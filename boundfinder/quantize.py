"""``quantize(x, fmt, rounding)``: round a tensor to a number format, returning a tensor of the same kind.

>>> import torch
>>> quantize(torch.tensor([1.9875]), "e8m7", "truncate")  # the original study's 16-bit filter
tensor([1.9844])
>>> quantize(torch.tensor([0.1, 300.0, 1e6]), "e4m3fn").tolist()
[0.1015625, 288.0, nan]
>>> quantize(torch.tensor([-10.0, 10.0, 30.0]), "uint8")  # scale 40/255 and zero point 64 from min/max
tensor([-10.0392,  10.0392,  29.9608])
"""

from __future__ import annotations

import functools

import torch
from torch.utils import _python_dispatch

from boundfinder import gpu, kernels, native
from boundfinder.errors import FormatError
from boundfinder.formats import (
    ROUNDING_MODES,
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    Format,
    IntFormat,
    check_rounding,
    parse_format,
)

__all__ = ["affine_qparams", "fake_quantize_affine", "quantize", "quantize_ste"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise FormatError(f"quantize takes a torch.Tensor, but got {type(x).__name__}.")
    if x.dtype not in _FLOAT_DTYPES:
        raise FormatError(f"quantize takes a float32, bfloat16 or float16 tensor, but got dtype={x.dtype}; "
                          "convert integer data to float first.")


def draw_seed(generator: torch.Generator | None) -> int:
    """A seed drawn from a CPU generator (so CPU and GPU draw the same bits)."""
    return int(torch.randint(0, 2**31 - 1, (), generator=generator, dtype=torch.int64))


def _seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The stochastic kernels' seed argument (``kernels.seed_keys``) from a freshly drawn seed."""
    return _seed_tensor(draw_seed(generator), device)


def _seed_tensor(seed: int, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # From pinned memory the copy is asynchronous; from pageable memory it would stall the host once per
        # call, so back-to-back calls could not overlap their host work with the previous kernel.
        return kernels.seed_keys(seed).pin_memory().to(device, non_blocking=True)
    return kernels.seed_keys(seed, device)


# Cached constant tensors are built with every dispatch mode switched off: one built while a mode is active
# (op-level emulation rounds the output of every op, a float32 constant too) would keep that mode's changes.
@functools.lru_cache(maxsize=16)
def _no_seed(device: str) -> torch.Tensor:
    """The seed argument of kernels called without stochastic rounding (unused by them)."""
    with _python_dispatch._disable_current_modes():
        return torch.zeros(kernels.LANES + 1, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=256)
def _float_params(fmt: FloatFormat, device: str) -> torch.Tensor:
    with _python_dispatch._disable_current_modes():
        return kernels.float_params(fmt, torch.device(device))


@functools.lru_cache(maxsize=256)
def _fixed_params(fmt: FixedPointFormat, device: str) -> torch.Tensor:
    with _python_dispatch._disable_current_modes():
        return kernels.fixed_params(fmt, torch.device(device))


@functools.lru_cache(maxsize=1024)
def _dynamic_params(word_bits: int, frac_bits: int) -> torch.Tensor:
    """The fixed-point kernel's parameters for a dynamic fixed-point word with ``frac_bits`` (on the CPU)."""
    with _python_dispatch._disable_current_modes():
        return kernels.fixed_params(FixedPointFormat(word_bits=word_bits, frac_bits=0), torch.device("cpu"),
                                    frac_bits=frac_bits)


def quantize(x: torch.Tensor, fmt: str | Format, rounding: str = "nearest", *,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Round every element of ``x`` to ``fmt``; returns a new tensor with x's shape, dtype and device (and its
    strides, where ``x`` is dense: channels_last stays channels_last).

    ``rounding``: ``"nearest"`` (ties to even), ``"truncate"`` (toward zero; for ``e8m{M}`` this is the bitmask
    AND of the float32 word), ``"up"`` (toward +inf), ``"down"`` (toward -inf), ``"stochastic"`` (round up
    with probability equal to the fractional position between the two neighbours, resolved to 2**-30;
    reproducible: the random bits come from a counter-based hash seeded from ``generator``, or from torch's
    default generator, so ``torch.manual_seed`` fixes them, identically on CPU and GPU).

    bfloat16 and float16 inputs are rounded through float32 (exact) and cast back; a format wider than the
    input dtype is rounded once more by that cast. Not differentiable: use ``quantize_ste`` for training.
    """
    _check_input(x)
    fmt = parse_format(fmt)
    allowed = ("nearest", "stochastic") if isinstance(fmt, BinaryFormat) else ROUNDING_MODES
    check_rounding(rounding, allowed)
    if x.numel() == 0:
        return x.detach().clone()
    draws = _stream_length(x, fmt) if rounding == "stochastic" else 0
    if draws >= 2**31:
        # the counter of the random-bit hash is an int32 element index
        got = (f"{draws} with MX rows padded to whole blocks of {fmt.block_size}; round the tensor in chunks or use a "
               "smaller block size." if isinstance(fmt, BlockFormat) else f"{draws}; round the tensor in chunks.")
        raise FormatError(f"stochastic rounding takes at most 2**31 - 1 elements per call, but got {got}")
    return quantize_with_seed(x, fmt, rounding, draw_seed(generator) if rounding == "stochastic" else None)


def _stream_length(x: torch.Tensor, fmt: Format) -> int:
    """How many random numbers stochastic rounding of ``x`` draws: one per element, MX rows padded to whole
    blocks (an axis the tensor does not have is reported later, by the block rounding)."""
    if not isinstance(fmt, BlockFormat) or not -max(x.dim(), 1) <= fmt.axis < max(x.dim(), 1):
        return x.numel()
    n = x.shape[fmt.axis] if x.dim() else 1
    return x.numel() // n * -(-n // fmt.block_size) * fmt.block_size


def quantize_with_seed(x: torch.Tensor, fmt: Format, rounding: str, seed: int | None) -> torch.Tensor:
    """``quantize`` with the stochastic seed already drawn (``draw_seed``; None for the other modes), for
    callers that drew it for a path that then failed; ``x`` and ``fmt`` as ``quantize`` checked them."""
    mode = kernels.MODE[rounding]
    dtype = x.dtype
    # every kernel input is detached (no autograd graph is recorded), so no no_grad() context is needed
    triton = not _is_fp32(fmt)
    if triton and gpu.usable(x, mode):
        # one pass in x's own dtype and layout, into a fresh tensor like x
        out = gpu.try_round(x.detach(), fmt, mode, seed)
        if out is not None:
            return out
        triton = not x.is_contiguous()  # (a block kernel may take the contiguous copy; otherwise no kernel will)
    # resolve_neg: a lazily negated view (torch._neg_view) must reach the kernels with its values, not its storage
    x32 = x.detach().to(torch.float32).resolve_neg().contiguous()
    # the Triton kernels on the contiguous copy (a view with gaps, stochastic rounding of a non-contiguous tensor,
    # a negated view), else the torch path
    out = gpu.try_round(x32, fmt, mode, seed) if triton and gpu.usable(x32, mode) else None
    if out is None:
        out = _dispatch(x32, fmt, mode, _no_seed(str(x.device)) if seed is None else _seed_tensor(seed, x.device))
    # A fresh tensor, never a view: callers (autograd Functions among them) may modify it in place.
    out = out.to(dtype) if out._base is None else out.detach().to(dtype)
    if out.stride() != x.stride():
        # the input's layout where it is dense (channels_last, a transpose), as torch's element-wise ops keep it
        like = torch.empty_like(x, dtype=dtype)
        if like.stride() != out.stride():
            out = like.copy_(out)
    return out


def _is_fp32(fmt: Format) -> bool:
    """float32 itself: rounding changes nothing (exp_bits=8 fixes the bias at 127)."""
    return (isinstance(fmt, FloatFormat) and fmt.man_bits == 23 and fmt.exp_bits == 8 and fmt.subnormals
            and fmt.overflow == "inf")


def _dispatch(x: torch.Tensor, fmt: Format, mode: int, seed: torch.Tensor) -> torch.Tensor:
    dev = str(x.device)
    if _is_fp32(fmt):
        return x.clone()  # nothing to round
    if isinstance(fmt, FloatFormat):
        params = _float_params(fmt, dev)
        # the kernel takes and returns the float32 words: reinterpreting inside a compiled kernel is slow on CPU
        words = kernels.run(kernels.round_float, x.view(torch.int32), (params, seed),
                            (mode, kernels.OVERFLOW[fmt.overflow], kernels.float_variant(fmt)), elementwise=True,
                            lanes=mode == kernels.MODE["stochastic"])
        return words.view(torch.float32)
    if isinstance(fmt, FixedPointFormat):
        return kernels.run(kernels.round_fixed, x, (_fixed_params(fmt, dev), seed), (mode,), elementwise=True,
                           lanes=mode == kernels.MODE["stochastic"])
    if isinstance(fmt, DynamicFixedPointFormat):
        allowed = int(fmt.overflow_rate * x.numel())
        ext = native.load() if native.usable(x) else None
        if ext is not None:  # the exponent histogram in one read, and the rule on it, in one call
            params = _dynamic_params(fmt.word_bits, ext.dynamic_frac_bits(x, allowed, fmt.word_bits))
        else:  # the histogram from a tensor of bins, the rule in tensor operations (no host synchronisation)
            frac = kernels.dynamic_frac_bits(x.view(torch.int32), torch.tensor(allowed, device=x.device),
                                             fmt.word_bits).to(torch.float32)
            base = FixedPointFormat(word_bits=fmt.word_bits, frac_bits=0)
            params = torch.stack([torch.exp2(frac), torch.exp2(-frac),
                                  torch.tensor(float(base.qmin), device=x.device),
                                  torch.tensor(float(base.qmax), device=x.device)])
        return kernels.run(kernels.round_fixed, x, (params, seed), (mode,), elementwise=True,
                           lanes=mode == kernels.MODE["stochastic"])
    if isinstance(fmt, IntFormat):
        if fmt.axis is not None:
            out = _native_channels(x, fmt, mode, seed)
            if out is not None:
                return out
        lo, hi = _minmax(x, fmt.axis)
        scale, zp = affine_qparams(lo, hi, fmt)
        return _fake_quant(x, scale, zp, fmt, mode, seed)
    if isinstance(fmt, BinaryFormat):
        return _binarize(x, fmt, mode, seed)
    if isinstance(fmt, BlockFormat):
        return _block(x, fmt, mode, seed)
    raise FormatError(f"no quantizer for format {fmt!r}.")


# -- integer affine -------------------------------------------------------------------------------------------
def _channel_view(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, int]:
    if x.dim() == 0:
        raise FormatError("per-channel quantization needs a tensor with at least one dimension, but got a scalar.")
    if not -x.dim() <= axis < x.dim():
        raise FormatError(f"channel axis must satisfy `-{x.dim()} <= axis < {x.dim()}` for a tensor of shape "
                          f"{tuple(x.shape)}, but got axis={axis}.")
    return x.movedim(axis, 0).reshape(x.shape[axis], -1), axis % x.dim()


def _minmax(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if axis is None:
        return torch.aminmax(x)
    rows, _ = _channel_view(x, axis)
    return torch.aminmax(rows, dim=1)


def affine_qparams(min_val: torch.Tensor, max_val: torch.Tensor, fmt: IntFormat | str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) from a calibrated range, as torch.ao's MinMaxObserver computes
    them: the range is widened to include 0; symmetric formats use zero point 0 (signed) or 2**(bits-1).

    >>> s, z = affine_qparams(torch.tensor(-10.0), torch.tensor(30.0), "uint8")
    >>> round(float(s), 6), int(z)
    (0.156863, 64)
    """
    fmt = parse_format(fmt)
    if not isinstance(fmt, IntFormat):
        raise FormatError(f"affine_qparams needs an IntFormat (e.g. 'int8', 'uint8'), but got {fmt}.")
    min_val = torch.as_tensor(min_val, dtype=torch.float32)
    max_val = torch.as_tensor(max_val, dtype=torch.float32, device=min_val.device)
    lo = torch.minimum(min_val, torch.zeros_like(min_val))
    hi = torch.maximum(max_val, torch.zeros_like(max_val))
    eps = torch.finfo(torch.float32).eps
    # (divisors as device tensors: CUDA divides by a Python number as a multiplication by its reciprocal, which
    # is not correctly rounded; the CPU divides either way)
    span = torch.full_like(hi, float(fmt.qmax - fmt.qmin))
    if fmt.symmetric:
        hi = torch.maximum(-lo, hi)
        scale = torch.clamp(hi / (span * 0.5), min=eps)
        zp_value = 0 if fmt.signed else 2 ** (fmt.bits - 1)
        zp = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / span, min=eps)
        zp = fmt.qmin - torch.round(lo / scale).to(torch.int32)
        zp = torch.clamp(zp, fmt.qmin, fmt.qmax)
    return scale, zp


def fake_quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, fmt: IntFormat | str,
                         rounding: str = "nearest", *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize-dequantize with given parameters; bit-exact with ``torch.fake_quantize_per_tensor_affine``
    (0-d scale) and ``torch.fake_quantize_per_channel_affine`` (1-d scale along ``fmt.axis``) for nearest."""
    _check_input(x)
    fmt = parse_format(fmt)
    if not isinstance(fmt, IntFormat):
        raise FormatError(f"fake_quantize_affine needs an IntFormat, but got {fmt}.")
    check_rounding(rounding)
    seed = _seed(generator, x.device) if rounding == "stochastic" else _no_seed(str(x.device))
    with torch.no_grad():
        out = _fake_quant(x.detach().to(torch.float32).resolve_neg().contiguous(),
                          torch.as_tensor(scale, dtype=torch.float32),
                          torch.as_tensor(zero_point), fmt, kernels.MODE[rounding], seed)
    return out.to(x.dtype)


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, fmt: IntFormat, mode: int,
                seed: torch.Tensor) -> torch.Tensor:
    scale = scale.to(device=x.device, dtype=torch.float32)
    zp = zp.to(device=x.device, dtype=torch.float32)
    if fmt.axis is None or scale.dim() == 0:
        return kernels.run(kernels.fake_quant_affine, x, (scale, zp, seed), (fmt.qmin, fmt.qmax, mode),
                           elementwise=True, lanes=mode == kernels.MODE["stochastic"])
    rows, axis = _channel_view(x, fmt.axis)
    out = kernels.run(kernels.fake_quant_affine, rows, (scale[:, None], zp[:, None], seed),
                      (fmt.qmin, fmt.qmax, mode))
    return _from_channel_view(out, x, axis)


def _from_channel_view(rows: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """``rows`` (channels, -1) back in the shape of ``x``, whose channel axis is ``axis`` (see _channel_view)."""
    return rows.reshape(x.movedim(axis, 0).shape).movedim(0, axis).contiguous()


def _native_channels(x: torch.Tensor, fmt: IntFormat, mode: int, seed: torch.Tensor) -> torch.Tensor | None:
    """Per-channel integer affine quantization of a float32 CPU tensor by the native extension: each channel's
    range, scale and zero point, and the channel quantized while it is in cache (the torch kernels' results); None
    where the extension is not there, or a channel holds an infinity or NaN (the torch kernels take those)."""
    rows, axis = _channel_view(x, fmt.axis)
    ext = native.load() if native.usable(rows) else None
    if ext is None:
        return None
    zero = 0 if fmt.signed else 2 ** (fmt.bits - 1)  # (affine_qparams' symmetric zero point)
    out, finite = ext.round_affine_rows(rows.contiguous(), fmt.qmin, fmt.qmax, fmt.symmetric, zero, mode,
                                        int(seed[kernels.LANES]))
    return _from_channel_view(out, x, axis) if finite else None


# -- binary ---------------------------------------------------------------------------------------------------
def _binarize(x: torch.Tensor, fmt: BinaryFormat, mode: int, seed: torch.Tensor) -> torch.Tensor:
    # the mean |x| is accumulated in float64: a float32 sum of |x| overflows to inf when the tensor holds values
    # near float32's maximum, although their mean is finite (float64 rounds the mean once, to float32)
    if fmt.scale != "mean":
        scale = torch.ones((), dtype=torch.float32, device=x.device)
    elif fmt.axis is None:
        scale = kernels.run(kernels.mean_abs, x.reshape(-1), (), ())
    else:
        rows, axis = _channel_view(x, fmt.axis)
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        total = rows.abs().sum(dim=1, dtype=torch.float64)  # (divided as in kernels.mean_abs)
        scale = (total / torch.full_like(total, rows.shape[1])).to(torch.float32).view(shape)
    if scale.dim() == 0:
        return kernels.run(kernels.binary_sign, x, (scale, seed), (mode,), elementwise=True,
                           lanes=mode == kernels.MODE["stochastic"])
    return kernels.binary_sign(x, scale, seed, mode)


# -- block ----------------------------------------------------------------------------------------------------
def _block(x: torch.Tensor, fmt: BlockFormat, mode: int, seed: torch.Tensor) -> torch.Tensor:
    x1 = x.reshape(1) if x.dim() == 0 else x
    if not -x1.dim() <= fmt.axis < x1.dim():
        raise FormatError(f"block axis must satisfy `-{x1.dim()} <= axis < {x1.dim()}` for shape "
                          f"{tuple(x1.shape)}, but got axis={fmt.axis}.")
    moved = x1.movedim(fmt.axis, -1)
    n = moved.shape[-1]
    elem = fmt.element
    ext = native.load() if native.usable(moved) else None
    if ext is not None:
        # float32 CPU tensors: one pass over the rows, each block rounded while it is in cache, a row's last block
        # as long as the row leaves it (the torch kernels' results, without their padding)
        out = ext.round_blocks(moved.reshape(-1, n).contiguous(), fmt.block_size, _element_fields(elem),
                               isinstance(elem, FixedPointFormat), mode, fmt.element_emax, int(seed[kernels.LANES]))
        return out.view(moved.shape).movedim(-1, fmt.axis).reshape(x.shape).contiguous()
    pad = (-n) % fmt.block_size
    rows = torch.nn.functional.pad(moved, (0, pad)) if pad else moved
    blocks = rows.reshape(-1, fmt.block_size)
    dev = str(x.device)
    if isinstance(elem, FixedPointFormat):
        params = _fixed_params(elem, dev)
        out = kernels.run(kernels.round_block, blocks.contiguous(), (params, seed), (mode, fmt.element_emax, True))
    else:
        words = kernels.run(kernels.round_block_words, blocks.contiguous().view(torch.int32),
                            (_float_params(elem, dev), seed), (mode, fmt.element_emax))
        out = words.view(torch.float32)
    out = out.reshape(rows.shape)[..., :n].movedim(-1, fmt.axis)
    return out.reshape(x.shape).contiguous()


@functools.lru_cache(maxsize=256)
def _element_fields(elem: FloatFormat | FixedPointFormat) -> tuple[float, ...]:
    """An MX element's parameters as the native block kernel takes them (``kernels.float_fields`` or
    ``fixed_fields``)."""
    fields = kernels.fixed_fields(elem) if isinstance(elem, FixedPointFormat) else kernels.float_fields(elem)
    return tuple(float(f) for f in fields)


# -- straight-through estimator ---------------------------------------------------------------------------------
class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fmt, rounding, generator):
        ctx.binary = isinstance(fmt, BinaryFormat)
        if ctx.binary:
            ctx.save_for_backward(x)
        return quantize(x, fmt, rounding, generator=generator)

    @staticmethod
    def backward(ctx, grad):
        if ctx.binary:
            (x,) = ctx.saved_tensors
            grad = grad * (x.abs() <= 1).to(grad.dtype)  # BinaryNet: cancel the gradient where |x| > 1
        return grad, None, None, None


def quantize_ste(x: torch.Tensor, fmt: str | Format, rounding: str = "nearest", *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``quantize`` in the forward pass, identity in the backward (straight-through estimator).

    For binary formats the backward is BinaryNet's clipped STE: the gradient is zeroed where |x| > 1.

    >>> w = torch.tensor([0.3, -2.0], requires_grad=True)
    >>> quantize_ste(w, "binary").sum().backward()
    >>> w.grad.tolist()
    [1.0, 0.0]
    """
    return _STE.apply(x, parse_format(fmt), rounding, generator)
