"""The rules by which the Triton path picks its work (boundfinder/gpu.py), checked on the CPU against
independent enumerations: which tensors it takes, and which formats need no rounding back to bfloat16."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false

from boundfinder import FixedPointFormat, FloatFormat, FormatError, gpu
from tests.oracles import all_values


def _all_bf16(values: np.ndarray) -> bool:
    v = torch.as_tensor(values, dtype=torch.float64)
    return bool(torch.equal(v.to(torch.bfloat16).to(torch.float64), v))


def _float_formats():
    for e, m in itertools.product(range(1, 9), range(0, 15)):
        if e + m + 1 > 16:
            continue
        for bias, encoding, subnormals in itertools.product((None, 2**(e - 1) - 1 + 6, -(2**(e - 1)) + 8),
                                                            ("ieee", "fn"), (True, False)):
            try:
                yield FloatFormat(exp_bits=e, man_bits=m, bias=bias, encoding=encoding, subnormals=subnormals)
            except FormatError:
                continue


def test_bf16_exact_says_whether_every_value_is_a_bfloat16_value():
    checked = {True: 0, False: 0}
    for fmt in _float_formats():
        values = all_values(fmt)
        if not fmt.subnormals:  # (gfloat decodes exponent code 0 as normal; here its values flush to zero)
            values = values[(values == 0) | (values >= fmt.min_normal)]
        want = _all_bf16(values)
        assert gpu.bf16_exact(fmt) == want, fmt
        checked[want] += 1
    assert checked[True] > 100 and checked[False] > 100


@pytest.mark.parametrize("signed", [True, False])
def test_bf16_exact_for_fixed_point(signed):
    for word, frac in itertools.product(range(2, 13), (-126, -121, -120, 0, 3, 8, 12, 126)):
        try:
            fmt = FixedPointFormat(word_bits=word, frac_bits=frac, signed=signed)
        except FormatError:
            continue
        steps = np.arange(fmt.qmin, fmt.qmax + 1, dtype=np.float64)
        assert gpu.bf16_exact(fmt) == _all_bf16(np.ldexp(steps, -frac)), fmt


def test_dense_rule_matches_torch():
    """``_dense`` (no gaps, no overlap, any order of dimensions) against torch's own predicate, over views."""
    base = torch.empty(4, 3, 5, 2)
    views = [base, base.permute(3, 1, 0, 2), base.transpose(0, 3), base[:, :2], base[..., ::2], base[:1],
             base[:, 1:2], base.contiguous(memory_format=torch.channels_last), base.expand(2, 4, 3, 5, 2),
             torch.empty(3, 1).expand(3, 4), torch.empty(1, 5), torch.empty(0, 3), torch.empty(()),
             torch.empty(6, 4).t()[::2], torch.empty(2, 3, 4).unfold(2, 2, 1)]
    for v in views:
        assert gpu._dense(v) == is_non_overlapping_and_dense_or_false(v), (tuple(v.shape), v.stride())


def test_the_triton_path_stays_off_for_cpu_tensors():
    x = torch.randn(16)
    assert not gpu.usable(x, 0)
