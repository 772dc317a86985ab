"""Emulate a precision policy on an ``nn.Module`` at the op, layer or batch level (see :func:`emulate`).

- ``layer.py``: hooks that round weights as used (straight-through), layer inputs/outputs and gradients;
- ``op.py``: a TorchDispatchMode that rounds every floating-point op output, with chunked accumulation;
- ``batch.py``: in-place rounding of parameters and optimizer state after optimizer steps;
- ``api.py``: :func:`emulate` and the :class:`Emulation` handle.
"""

from __future__ import annotations

from .api import LEVEL_ROLES, LEVELS, Emulation, emulate
from .op import RoundingMode, chunked_matmul

__all__ = ["LEVELS", "LEVEL_ROLES", "Emulation", "RoundingMode", "chunked_matmul", "emulate"]
