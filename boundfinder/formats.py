"""Number formats as data: one frozen dataclass per family, parsed from and printed to short names.

>>> fmt = parse_format("e4m3fn")
>>> fmt.max_finite, fmt.bits, str(fmt)
(448.0, 8, 'e4m3fn')
>>> parse_format("bf16") == FloatFormat(exp_bits=8, man_bits=7)
True
>>> str(parse_format("fixed16.8")), parse_format("fixed16.8").max_finite
('fixed16.8', 127.99609375)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from boundfinder.errors import FormatError

__all__ = [
    "ROUNDING_MODES",
    "BinaryFormat",
    "BlockFormat",
    "DynamicFixedPointFormat",
    "FixedPointFormat",
    "FloatFormat",
    "Format",
    "IntFormat",
    "check_rounding",
    "format_names",
    "parse_format",
]

ROUNDING_MODES = ("nearest", "truncate", "stochastic", "up", "down")

Encoding = Literal["ieee", "fn", "finite"]
Overflow = Literal["inf", "nan", "saturate"]


def check_rounding(rounding: str, allowed: tuple[str, ...] = ROUNDING_MODES) -> str:
    if rounding not in allowed:
        raise FormatError(f"rounding must be one of {allowed}, but got {rounding!r}.")
    return rounding


def _check_int(name: str, value, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        hint = f" ({why})" if why else ""
        raise FormatError(f"`{low} <= {name} <= {high}` must hold{hint}, but got {name}={value!r}.")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise FormatError(f"{name} must be one of {choices}, but got {name}={value!r}.")


class Format:
    """Base class of every number format. Formats are frozen, hashable and print as a name that parses back."""

    bits: int

    def to_dict(self) -> dict:
        return {"family": type(self).__name__, **dataclasses.asdict(self)} | {"name": str(self)}


@dataclass(frozen=True, kw_only=True)
class FloatFormat(Format):
    """A binary floating-point format with ``exp_bits`` exponent and ``man_bits`` explicit fraction bits.

    ``encoding`` says what the top exponent field holds:
      ``"ieee"``   reserved for infinities and NaNs (IEEE 754: fp16, bf16, e5m2, generic ``e{E}m{M}``);
      ``"fn"``     ordinary numbers, except the all-ones code which is NaN (OCP FP8 e4m3fn); no infinities;
      ``"finite"`` ordinary numbers only: no infinity, no NaN (OCP FP6/FP4 e3m2fn, e2m3fn, e2m1fn).
    ``overflow`` says what a finite value that rounds beyond ``max_finite`` becomes (and what an infinite input
    becomes when the format has no infinity): ``"inf"``, ``"nan"`` or ``"saturate"`` (clamp to +-max_finite,
    infinite inputs too). Rounding toward zero never overflows a finite input, as in IEEE 754.
    ``subnormals=False`` removes the subnormal grid: between 0 and ``min_normal`` only those two values exist.
    NaN inputs stay NaN whatever the format (the tensor that carries the result can hold NaN).
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    encoding: Encoding = "ieee"
    overflow: Overflow | None = None
    subnormals: bool = True

    _DEFAULT_OVERFLOW: ClassVar[dict[str, str]] = {"ieee": "inf", "fn": "nan", "finite": "saturate"}
    _VALID_OVERFLOW: ClassVar[dict[str, tuple[str, ...]]] = {
        "ieee": ("inf", "saturate"),
        "fn": ("nan", "saturate"),
        "finite": ("saturate",),
    }

    def __post_init__(self) -> None:
        _check_int("exp_bits", self.exp_bits, 1, 8, "emulation runs in float32, whose exponent has 8 bits")
        _check_int("man_bits", self.man_bits, 0, 23, "float32 has 23 fraction bits")
        _check_choice("encoding", self.encoding, ("ieee", "fn", "finite"))
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if self.overflow is None:
            object.__setattr__(self, "overflow", self._DEFAULT_OVERFLOW[self.encoding])
        _check_choice(f"overflow (for encoding={self.encoding!r})", self.overflow,
                      self._VALID_OVERFLOW[self.encoding])
        if not isinstance(self.subnormals, bool):
            raise FormatError(f"subnormals must be a bool, but got subnormals={self.subnormals!r}.")
        if self.encoding == "ieee" and self.exp_bits == 1:
            raise FormatError("`exp_bits >= 2` must hold for encoding='ieee' (the top exponent field is "
                              f"reserved for inf/NaN, leaving no normal numbers), but got exp_bits={self.exp_bits}.")
        if self.encoding == "fn" and self.man_bits == 0 and self.exp_bits == 1:
            raise FormatError("encoding='fn' with exp_bits=1 and man_bits=0 leaves no finite nonzero value.")
        # The whole format must sit inside float32's range so that every value is exact in the container.
        if self.emin < -126 or self.emax > 127:
            raise FormatError(
                f"`-126 <= emin` and `emax <= 127` must hold so the format fits in float32, but bias={self.bias} "
                f"gives emin={self.emin}, emax={self.emax} for exp_bits={self.exp_bits}."
            )

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        top = 2**self.exp_bits - 1 - self.bias
        return top - 1 if self.encoding == "ieee" else top

    @property
    def max_finite(self) -> float:
        man_top = 2**self.man_bits - 1
        if self.encoding == "fn":  # the all-ones code is NaN, so the top binade loses its last code
            man_top -= 1
            if man_top < 0:  # man_bits == 0: the whole top binade is the NaN code
                return math.ldexp(1.0, self.emax - 1)
        return math.ldexp(1.0 + man_top / 2**self.man_bits, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (``min_normal`` when the format has no subnormals)."""
        return math.ldexp(1.0, self.emin - self.man_bits) if self.subnormals else self.min_normal

    @property
    def has_inf(self) -> bool:
        return self.encoding == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.encoding in ("ieee", "fn")

    def __str__(self) -> str:
        base = f"e{self.exp_bits}m{self.man_bits}"
        if self.encoding != "ieee":
            base += "fn"
            ocp = "fn" if self.bits >= 8 else "finite"  # OCP naming: 8-bit fn has a NaN code, 6/4-bit has none
            if self.encoding != ocp:
                base += "_nan" if self.encoding == "fn" else "_nonan"
        mods = ""
        if self.bias != 2 ** (self.exp_bits - 1) - 1:
            mods += f"_b{self.bias}"
        if not self.subnormals:
            mods += "_nosub"
        if self.overflow != self._DEFAULT_OVERFLOW[self.encoding]:
            mods += "_sat"
        if not mods:
            return _FLOAT_ALIASES_BY_NAME.get(base, base)
        return base + mods


@dataclass(frozen=True, kw_only=True)
class FixedPointFormat(Format):
    """Fixed point <IL, FL> (Gupta et al. 2015): ``word_bits`` bits of which ``frac_bits`` are fraction bits.

    Values are ``k * 2**-frac_bits`` for integers k in [-2**(W-1), 2**(W-1) - 1] (signed) or [0, 2**W - 1];
    out-of-range values saturate. ``word_bits`` is at most 24 so that every value is exact in float32.
    There is no negative zero: the sign of a zero result is unspecified.
    """

    word_bits: int
    frac_bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        _check_int("word_bits", self.word_bits, 2 if self.signed else 1, 24,
                   "every fixed-point value must be exact in float32's 24-bit significand")
        _check_int("frac_bits", self.frac_bits, -126, 126)
        if self.frac_bits > self.word_bits:
            raise FormatError(f"`frac_bits <= word_bits` must hold, but got frac_bits={self.frac_bits}, "
                              f"word_bits={self.word_bits}.")

    @property
    def bits(self) -> int:
        return self.word_bits

    @property
    def qmin(self) -> int:
        return -(2 ** (self.word_bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.word_bits - 1) - 1 if self.signed else 2**self.word_bits - 1

    @property
    def quantum(self) -> float:
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def max_finite(self) -> float:
        return self.qmax * self.quantum

    def __str__(self) -> str:
        return f"{'' if self.signed else 'u'}fixed{self.word_bits}.{self.frac_bits}"


@dataclass(frozen=True, kw_only=True)
class DynamicFixedPointFormat(Format):
    """Dynamic fixed point (Courbariaux et al. 2014): a fixed-point word whose scale follows the tensor.

    Each call picks the largest ``frac_bits`` for which at most ``overflow_rate`` of the elements exceed the
    range (the paper's overflow-rate rule, applied to the tensor at hand instead of a running update).
    """

    word_bits: int
    overflow_rate: float = 1e-4

    def __post_init__(self) -> None:
        _check_int("word_bits", self.word_bits, 2, 24,
                   "every fixed-point value must be exact in float32's 24-bit significand")
        if not (isinstance(self.overflow_rate, (int, float)) and 0.0 <= self.overflow_rate < 1.0):
            raise FormatError(f"`0 <= overflow_rate < 1` must hold, but got overflow_rate={self.overflow_rate!r}.")

    @property
    def bits(self) -> int:
        return self.word_bits

    def __str__(self) -> str:
        rate = "" if self.overflow_rate == 1e-4 else f"_r{self.overflow_rate:g}"
        return f"dfixed{self.word_bits}{rate}"


@dataclass(frozen=True, kw_only=True)
class IntFormat(Format):
    """Integer affine quantization ``x ~ (q - zero_point) * scale`` with q in [qmin, qmax].

    Scale and zero point come from min/max calibration of the tensor being quantized (per tensor, or per
    channel along ``axis``), with the formulas of ``torch.ao.quantization``'s MinMaxObserver: the range always
    includes 0 so that zero is exact. ``symmetric`` uses a zero point of 0 (signed) or the mid code (unsigned).
    """

    bits: int
    signed: bool = True
    symmetric: bool = False
    axis: int | None = None

    def __post_init__(self) -> None:
        _check_int("bits", self.bits, 1 if not self.signed else 2, 16,
                   "codes and their products with the scale must stay exact in float32")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise FormatError(f"axis must be None (per tensor) or an int, but got axis={self.axis!r}.")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def __str__(self) -> str:
        name = f"{'' if self.signed else 'u'}int{self.bits}"
        if self.symmetric:
            name += "_sym"
        if self.axis is not None:
            name += f"_ch{self.axis}" if self.axis >= 0 else f"_chm{-self.axis}"
        return name


@dataclass(frozen=True, kw_only=True)
class BinaryFormat(Format):
    """Binarization (BinaryNet, Courbariaux et al. 2016): sign(x) in {-1, +1}, with sign(0) = +1.

    ``scale="mean"`` multiplies by mean(|x|) (per tensor, or per channel along ``axis``), as in XNOR-Net.
    Stochastic rounding draws +1 with probability hard_sigmoid(x) = clip((x + 1) / 2, 0, 1).
    """

    scale: Literal["none", "mean"] = "none"
    axis: int | None = None

    def __post_init__(self) -> None:
        _check_choice("scale", self.scale, ("none", "mean"))
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise FormatError(f"axis must be None or an int, but got axis={self.axis!r}.")

    @property
    def bits(self) -> int:
        return 1

    def __str__(self) -> str:
        name = "binary" if self.scale == "none" else "binary_mean"
        if self.axis is not None:
            name += f"_ch{self.axis}" if self.axis >= 0 else f"_chm{-self.axis}"
        return name


@dataclass(frozen=True, kw_only=True)
class BlockFormat(Format):
    """A block format (OCP Microscaling, MX): ``block_size`` consecutive elements along ``axis`` share one
    power-of-two scale stored as e8m0; each element is stored in ``element`` (a FloatFormat, or a
    FixedPointFormat for MXINT8).

    The shared exponent is floor(log2(max|x| in block)) - emax(element), clamped to e8m0's [-127, 127];
    elements are rounded in the element format and saturate at its largest finite value (OCP MX v1.0 §6.3).
    A block holding an infinity or NaN becomes all NaN (the scale is NaN). An element whose largest exponent is
    below 127 needs a smallest value of at least 2**-95 (true of every OCP element): a block whose maximum lies
    above the element's range scales its elements down, some below float32's normals, where the kernels keep only
    that they are far under the element's grid.
    """

    element: FloatFormat | FixedPointFormat
    block_size: int = 32
    axis: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.element, (FloatFormat, FixedPointFormat)):
            raise FormatError(f"element must be a FloatFormat or FixedPointFormat, but got {self.element!r}.")
        _check_int("block_size", self.block_size, 1, 2**20)
        elem = self.element
        if isinstance(elem, FloatFormat) and self.element_emax < 127 and elem.min_subnormal < 2.0**-95:
            # A block whose maximum lies above the element's range scales its elements down, some below float32's
            # normals, where the kernels keep only that they are far under the element's smallest value.
            max_bias = 96 - (elem.man_bits if elem.subnormals else 0)  # (smallest value 2**(1 - bias - man_sub))
            raise FormatError(
                f"`smallest value >= 2**-95 or largest exponent >= 127` must hold for an MX element, but {elem} "
                f"has smallest value 2**{math.log2(elem.min_subnormal):g} and largest exponent {self.element_emax}; "
                f"give the element a bias of at most {max_bias} (it has {elem.bias}).")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise FormatError(f"axis must be an int, but got axis={self.axis!r}.")

    @property
    def bits(self) -> int:
        return self.element.bits

    @property
    def bits_per_element(self) -> float:
        """Storage per element including the shared 8-bit scale."""
        return self.element.bits + 8 / self.block_size

    @property
    def element_emax(self) -> int:
        return math.floor(math.log2(self.element.max_finite))

    def __str__(self) -> str:
        base = _BLOCK_NAMES_BY_ELEMENT.get(self.element)
        if base is None:
            base = f"mx_{self.element}"
        mods = "" if self.block_size == 32 else f"_k{self.block_size}"
        if self.axis != -1:
            mods += f"_ax{self.axis}" if self.axis >= 0 else f"_axm{-self.axis}"
        return base + mods


# -- names ----------------------------------------------------------------------------------------------------
_FLOAT_ALIASES = {"fp32": "e8m23", "bf16": "e8m7", "fp16": "e5m10", "tf32": "e8m10"}
_FLOAT_ALIASES_BY_NAME = {v: k for k, v in _FLOAT_ALIASES.items()}

_MX_ELEMENTS = {
    "mxfp8_e4m3": "e4m3fn",
    "mxfp8_e5m2": "e5m2",
    "mxfp6_e3m2": "e3m2fn",
    "mxfp6_e2m3": "e2m3fn",
    "mxfp4_e2m1": "e2m1fn",
    "mxint8": "fixed8.6",
}

_FLOAT_RE = re.compile(r"^e(\d+)m(\d+)(fn)?((?:_(?:nan|nonan|nosub|sat|b-?\d+))*)$")
_FIXED_RE = re.compile(r"^(u?)fixed(\d+)\.(-?\d+)$")
_DFIXED_RE = re.compile(r"^dfixed(\d+)(?:_r([0-9.eE+-]+))?$")
_INT_RE = re.compile(r"^(u?)int(\d+)((?:_(?:sym|ch\d+|chm\d+))*)$")
_BINARY_RE = re.compile(r"^binary(_mean)?(?:_(ch\d+|chm\d+))?$")
_BLOCK_RE = re.compile(r"^(mx\w+?|mx_[\w.]+?)((?:_(?:k\d+|ax\d+|axm\d+))*)$")


def _axis_of(token: str) -> int:
    return -int(token[3:]) if token.startswith("chm") or token.startswith("axm") else int(token[2:])


def _parse_float(name: str) -> FloatFormat | None:
    m = _FLOAT_RE.match(name)
    if m is None:
        return None
    e, mbits, fn, mods = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    tokens = [t for t in mods.split("_") if t]
    encoding = "ieee"
    if fn:
        encoding = "fn" if 1 + e + mbits >= 8 else "finite"
        if "nan" in tokens:
            encoding = "fn"
        if "nonan" in tokens:
            encoding = "finite"
    elif "nan" in tokens or "nonan" in tokens:
        raise FormatError(f"the _nan/_nonan modifiers apply to 'fn' formats only, but got {name!r}.")
    kwargs: dict = {"exp_bits": e, "man_bits": mbits, "encoding": encoding}
    for t in tokens:
        if t == "nosub":
            kwargs["subnormals"] = False
        elif t == "sat":
            kwargs["overflow"] = "saturate"
        elif t.startswith("b"):
            kwargs["bias"] = int(t[1:])
    return FloatFormat(**kwargs)


def parse_format(name: str | Format) -> Format:
    """Parse a format name (or return a ``Format`` unchanged).

    Names: ``fp32 bf16 fp16 tf32 e5m2 e4m3fn e3m2fn e2m3fn e2m1fn``; ``e{E}m{M}`` (IEEE-style: inf, NaN,
    subnormals) with optional ``fn`` (no inf; OCP naming: NaN code at 8+ bits, none below) and modifiers
    ``_sat`` (saturate on overflow), ``_nosub`` (no subnormals), ``_b{bias}``, ``_nan``/``_nonan``;
    ``fixed{W}.{F}`` / ``ufixed{W}.{F}``; ``dfixed{W}`` (dynamic fixed point); ``int{B}`` / ``uint{B}`` with
    ``_sym`` and ``_ch{axis}`` (per channel); ``binary`` / ``binary_mean``; ``mxfp8_e4m3 mxfp8_e5m2
    mxfp6_e3m2 mxfp6_e2m3 mxfp4_e2m1 mxint8`` with optional ``_k{block}``.

    >>> parse_format("e5m10") == parse_format("fp16")
    True
    >>> parse_format("e4m3fn").max_finite, parse_format("e5m2").max_finite
    (448.0, 57344.0)
    >>> parse_format("float17")
    Traceback (most recent call last):
    ...
    boundfinder.errors.FormatError: unknown format name 'float17'; valid names are ...
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise FormatError(f"a format must be a name (str) or a Format, but got {type(name).__name__}: {name!r}.")
    return _parse_name(name)


@functools.lru_cache(maxsize=1024)
def _parse_name(name: str) -> Format:
    """``parse_format`` of a name, cached: formats are immutable, and rounding calls parse one per call."""
    key = name.strip().lower()
    for alias, canonical in _FLOAT_ALIASES.items():
        if key == alias or key.startswith(alias + "_"):
            key = canonical + key[len(alias):]
            break
    fmt = _parse_float(key)
    if fmt is not None:
        return fmt
    if m := _FIXED_RE.match(key):
        return FixedPointFormat(word_bits=int(m.group(2)), frac_bits=int(m.group(3)), signed=not m.group(1))
    if m := _DFIXED_RE.match(key):
        rate = float(m.group(2)) if m.group(2) else 1e-4
        return DynamicFixedPointFormat(word_bits=int(m.group(1)), overflow_rate=rate)
    if m := _INT_RE.match(key):
        tokens = [t for t in m.group(3).split("_") if t]
        axis = None
        for t in tokens:
            if t.startswith("ch"):
                axis = _axis_of(t)
        return IntFormat(bits=int(m.group(2)), signed=not m.group(1), symmetric="sym" in tokens, axis=axis)
    if m := _BINARY_RE.match(key):
        return BinaryFormat(scale="mean" if m.group(1) else "none",
                            axis=_axis_of(m.group(2)) if m.group(2) else None)
    if m := _BLOCK_RE.match(key):
        base, mods = m.group(1), m.group(2)
        if base in _MX_ELEMENTS:
            element = parse_format(_MX_ELEMENTS[base])
        elif base.startswith("mx_"):
            element = parse_format(base[3:])
        else:
            element = None
        if element is not None:
            kwargs = {}
            for t in (t for t in mods.split("_") if t):
                if t.startswith("k"):
                    kwargs["block_size"] = int(t[1:])
                else:
                    kwargs["axis"] = _axis_of(t)
            sat = element
            if isinstance(element, FloatFormat) and element.overflow != "saturate":
                sat = dataclasses.replace(element, overflow="saturate")
            return BlockFormat(element=sat, **kwargs)
    raise FormatError(f"unknown format name {name!r}; valid names are {', '.join(format_names())} and the "
                      "patterns e{E}m{M}[fn][_sat][_nosub][_b{bias}], fixed{W}.{F}, ufixed{W}.{F}, dfixed{W}, "
                      "int{B}[_sym][_ch{axis}], uint{B}, binary[_mean], mx_<element>[_k{block}].")


def format_names() -> list[str]:
    """The named formats, in the order ``boundfinder formats`` lists them."""
    return ["fp32", "tf32", "bf16", "fp16", "e5m2", "e4m3fn", "e3m2fn", "e2m3fn", "e2m1fn",
            "fixed16.8", "fixed8.4", "dfixed8", "int8", "uint8", "int8_sym", "int4", "binary", "binary_mean",
            *_MX_ELEMENTS]


_BLOCK_NAMES_BY_ELEMENT: dict = {}
for _name, _elem in _MX_ELEMENTS.items():
    _e = parse_format(_elem)
    if isinstance(_e, FloatFormat) and _e.overflow != "saturate":
        _e = dataclasses.replace(_e, overflow="saturate")
    _BLOCK_NAMES_BY_ELEMENT[_e] = _name
