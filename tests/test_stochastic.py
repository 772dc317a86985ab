"""Stochastic rounding: unbiased, P(round up) equal to the fractional position, reproducible from a seed."""

from __future__ import annotations

import math

import pytest
import torch

from boundfinder import kernels as K
from boundfinder import quantize

N = 400_000  # draws per check; a binomial proportion's standard error is then <= 0.0008


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("e4m3fn", 1.0, 1.125), ("e5m2", -3.0, -2.5), ("bf16", 1.0, 1.0078125), ("fixed8.4", 0.25, 0.3125),
     ("e4m3fn", 0.0, 2.0**-9), ("e2m1fn", 4.0, 6.0)],
)
@pytest.mark.parametrize("position", [0.25, 0.5, 0.9])
def test_probability_of_rounding_up_equals_fractional_position(name, lo, hi, position):
    x = lo + position * (hi - lo)
    y = quantize(torch.full((N,), x), name, "stochastic")
    assert set(torch.unique(y).tolist()) <= {lo, hi}
    p_far = (y == hi).double().mean().item()
    # 5 standard errors: a false alarm rate of ~1e-6 per check
    assert abs(p_far - position) < 5 * math.sqrt(position * (1 - position) / N)


def test_mean_of_many_draws_is_unbiased():
    x = torch.rand(2000) * 10
    draws = torch.stack([quantize(x, "e4m3fn", "stochastic") for _ in range(400)])
    err = (draws.double().mean(0) - x.double()).abs()
    # each draw's error is within one quantum q (<= 0.5 here); the mean of 400 draws has sd <= q/2/20
    q = 2.0 ** (torch.clamp(torch.floor(torch.log2(x.double())), min=-6) - 3)  # e4m3fn: emin -6, 3 bits
    assert (err <= 5 * q / 40).all()


def test_same_seed_same_result_and_generators_are_respected():
    x = torch.randn(10_000)
    torch.manual_seed(7)
    a = quantize(x, "e5m2", "stochastic")
    torch.manual_seed(7)
    b = quantize(x, "e5m2", "stochastic")
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(quantize(x, "e5m2", "stochastic", generator=g1), quantize(x, "e5m2", "stochastic", generator=g2))
    assert not torch.equal(quantize(x, "e5m2", "stochastic", generator=g1), quantize(x, "e5m2", "stochastic",
                                                                                      generator=g1))


def test_random_bits_are_uniform_and_decorrelated():
    r = K.random_bits(torch.tensor(12345, dtype=torch.int32), 1 << 20, torch.device("cpu")).double()
    u = r / 2**30
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 5 / math.sqrt(u.numel())
    counts = torch.histc(u, bins=64, min=0, max=1)
    expected = u.numel() / 64
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 120  # 63 degrees of freedom: P(chi2 > 120) < 1e-5


def test_random_bit_stream_is_pinned_and_the_same_in_rows_of_lanes_and_flat():
    """The stream is lowbias32(index ^ key): pinned values (a change of the stream changes every stochastic
    result a user has recorded), and CPU rows of LANES elements draw exactly the flat stream."""
    assert K.random_bits(12345, 8, torch.device("cpu")).tolist() == [
        660924129, 450966233, 49671543, 188852262, 557062983, 820607022, 738566409, 486681004]
    keys = K.seed_keys(2**31 - 2)
    flat = K.rand_like(keys, torch.empty(4096, dtype=torch.int32))
    rows = K.rand_like(keys, torch.empty(4096 // K.LANES, K.LANES, dtype=torch.int32))
    assert torch.equal(rows.reshape(-1), flat)
    assert flat[32:40].tolist() == [268227990, 846430811, 35118156, 508845283, 590694545, 217036213, 189612724,
                                    863293012]


@pytest.mark.parametrize("name", ["e4m3fn", "bf16", "e5m2", "fixed8.4", "binary"])
@pytest.mark.parametrize("n", [K.LANES * 1024, K.LANES * 1024 + 3])
def test_stochastic_result_does_not_depend_on_the_kernel_shape(name, n, monkeypatch):
    """A size that is a multiple of LANES runs as rows of LANES (compiled); any other size flat: the same
    elements get the same random bits either way, and the eager kernel agrees."""
    x = torch.randn(n) * 4

    def draw(t):
        return quantize(t, name, "stochastic", generator=torch.Generator().manual_seed(11))

    whole = draw(x)
    pad = (-n) % K.LANES or 5  # the other shape: flat if n is a multiple of LANES, else rows
    longer = draw(torch.cat([x, torch.zeros(pad)]))[:n]
    assert torch.equal(whole.view(torch.int32), longer.view(torch.int32))
    monkeypatch.setattr(K, "COMPILE_MIN_NUMEL", 1 << 40)
    assert torch.equal(draw(x).view(torch.int32), whole.view(torch.int32))


@pytest.mark.parametrize("fmt", [dict(exp_bits=8, man_bits=3, overflow="saturate"),
                                 dict(exp_bits=8, man_bits=10, overflow="saturate"),
                                 dict(exp_bits=8, man_bits=7, overflow="saturate")])
def test_float32_subnormals_round_up_with_their_fraction_of_the_smallest_subnormal(fmt):
    """Formats whose smallest normal is within man_bits binades of float32's (e8m3_sat): a float32 subnormal
    under the format's smallest subnormal q rounds up with probability x / q. (The kernel once shifted its
    significand the wrong way here: e8m3_sat rounded 2**-131 up with probability 1/32, not 1/4.)"""
    import numpy as np

    from boundfinder import FloatFormat, reference

    f = FloatFormat(**fmt)
    q = f.min_subnormal
    for v in (q / 4, q / 1024, q * 0.75):
        y = quantize(torch.full((N,), float(np.float32(v))), f, "stochastic")
        p = float(np.float32(v)) / q
        assert abs((y > 0).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-5
    # and bit for bit against the float64 reference, given the same random bits
    x = np.float32(q) * np.random.default_rng(0).uniform(-1.5, 1.5, 4096).astype(np.float32)
    rbits = np.random.default_rng(1).integers(0, 2**30, x.size)
    want = reference.round_float(x, f, "stochastic", rbits)
    got = K.round_float_bits(torch.from_numpy(x), K.float_params(f, torch.device("cpu")),
                             torch.from_numpy(rbits.astype(np.int32)), K.MODE["stochastic"],
                             K.OVERFLOW[f.overflow], K.float_variant(f)).numpy()
    assert (got.view(np.int32) == want.view(np.int32)).all()
