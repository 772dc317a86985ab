"""Bit-exact comparison of float tensors, with no dependency beyond torch and numpy (tests/test_gpu.py runs on
GPU machines where the oracles' packages may be missing)."""

from __future__ import annotations

import numpy as np
import torch


def bits_equal(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> bool:
    """Bit-exact equality, with every NaN equal to every NaN (payloads are not compared)."""
    a = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b = torch.as_tensor(np.asarray(b, dtype=np.float32))
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    return torch.equal(a[~nan_a].view(torch.int32), b[~nan_b].view(torch.int32))


def mismatches(got, want, x) -> str:
    got, want, x = (np.asarray(v, dtype=np.float32) for v in (got, want, x))
    bad = ~((got.view(np.int32) == want.view(np.int32)) | (np.isnan(got) & np.isnan(want)))
    idx = np.flatnonzero(bad)[:8]
    return "; ".join(f"x={x[i]!r} got={got[i]!r} want={want[i]!r}" for i in idx) + f" ({bad.sum()} in all)"
