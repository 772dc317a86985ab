"""Format dataclasses: derived values, names that print and parse back, and errors for every invalid field."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from boundfinder import (
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    FormatError,
    IntFormat,
    format_names,
    parse_format,
)
from tests.oracles import ML_DTYPES


@pytest.mark.parametrize("name", format_names())
def test_every_named_format_prints_a_name_that_parses_back(name):
    fmt = parse_format(name)
    assert str(fmt) == name
    assert parse_format(str(fmt)) == fmt
    assert json.loads(json.dumps(fmt.to_dict()))["name"] == name


@pytest.mark.parametrize(
    "fmt",
    [FloatFormat(exp_bits=5, man_bits=2, overflow="saturate"), FloatFormat(exp_bits=4, man_bits=3, subnormals=False),
     FloatFormat(exp_bits=5, man_bits=2, bias=12), FloatFormat(exp_bits=4, man_bits=3, encoding="finite"),
     FloatFormat(exp_bits=2, man_bits=1, encoding="fn"), FloatFormat(exp_bits=8, man_bits=7, overflow="saturate"),
     FixedPointFormat(word_bits=12, frac_bits=-2), FixedPointFormat(word_bits=8, frac_bits=8, signed=False),
     DynamicFixedPointFormat(word_bits=8, overflow_rate=0.01), IntFormat(bits=4, signed=False, axis=1),
     IntFormat(bits=8, symmetric=True, axis=-1), BinaryFormat(scale="mean", axis=0),
     BlockFormat(element=FloatFormat(exp_bits=3, man_bits=4, overflow="saturate"), block_size=16, axis=0)],
    ids=str,
)
def test_unnamed_formats_round_trip_through_their_names(fmt):
    assert parse_format(str(fmt)) == fmt


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_float_properties_agree_with_ml_dtypes(name):
    fmt = parse_format(name)
    info = ml_dtypes.finfo(ML_DTYPES[name])
    assert fmt.max_finite == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.bits == info.bits
    assert fmt.man_bits == info.nmant and fmt.has_inf == bool(np.isinf(np.array(np.inf).astype(ML_DTYPES[name])))


def test_named_aliases():
    assert parse_format("fp32") == FloatFormat(exp_bits=8, man_bits=23)
    assert parse_format("BF16") == parse_format("e8m7")
    assert parse_format("fp16") == FloatFormat(exp_bits=5, man_bits=10)
    assert parse_format("mxfp4_e2m1").element.max_finite == 6.0
    assert parse_format("mxint8").element == FixedPointFormat(word_bits=8, frac_bits=6)
    assert parse_format("uint8") == IntFormat(bits=8, signed=False)
    assert parse_format("e2m1fn").encoding == "finite" and parse_format("e4m3fn").encoding == "fn"
    assert parse_format(parse_format("int8")) == IntFormat(bits=8)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: FloatFormat(exp_bits=0, man_bits=3), ["1 <= exp_bits <= 8", "exp_bits=0"]),
        (lambda: FloatFormat(exp_bits=9, man_bits=3), ["1 <= exp_bits <= 8", "exp_bits=9"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=24), ["0 <= man_bits <= 23", "man_bits=24"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=-1), ["man_bits=-1"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=2.0), ["man_bits=2.0"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=2, encoding="weird"), ["encoding", "'ieee'"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=2, encoding="finite", overflow="inf"), ["overflow", "saturate"]),
        (lambda: FloatFormat(exp_bits=5, man_bits=2, bias=-200), ["emin", "bias=-200"]),
        (lambda: FloatFormat(exp_bits=1, man_bits=2), ["exp_bits >= 2", "ieee"]),
        (lambda: FixedPointFormat(word_bits=8, frac_bits=9), ["frac_bits <= word_bits", "frac_bits=9"]),
        (lambda: FixedPointFormat(word_bits=32, frac_bits=9), ["word_bits <= 24", "word_bits=32"]),
        (lambda: IntFormat(bits=0), ["bits=0"]),
        (lambda: IntFormat(bits=8, axis="x"), ["axis"]),
        (lambda: DynamicFixedPointFormat(word_bits=8, overflow_rate=1.5), ["overflow_rate"]),
        (lambda: BinaryFormat(scale="max"), ["scale", "'mean'"]),
        (lambda: BlockFormat(element=IntFormat(bits=8)), ["element must be"]),
        (lambda: parse_format("mx_e5m2_b100"), ["smallest value >= 2**-95 or largest exponent >= 127",
                                                "smallest value 2**-101", "largest exponent -70",
                                                "bias of at most 94 (it has 100)"]),
        (lambda: parse_format("float17"), ["unknown format name 'float17'", "e4m3fn", "fixed{W}.{F}"]),
        (lambda: parse_format("e9m2"), ["exp_bits=9"]),
        (lambda: parse_format("e5m24"), ["man_bits=24"]),
        (lambda: parse_format("fixed8.9"), ["frac_bits=9"]),
        (lambda: parse_format(8), ["a format must be a name"]),
        (lambda: parse_format("e5m2_nan"), ["'fn' formats only"]),
    ],
)
def test_invalid_fields_raise_one_format_error_with_the_invariant_and_value(build, words):
    with pytest.raises(FormatError) as info:
        build()
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_formats_are_frozen_and_keyword_only():
    fmt = parse_format("e4m3fn")
    with pytest.raises(AttributeError):
        fmt.man_bits = 4
    with pytest.raises(TypeError):
        FloatFormat(4, 3)
    assert hash(fmt) == hash(parse_format("e4m3fn"))
