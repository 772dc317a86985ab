"""Collection settings for the whole repository (doctests run over the package folders too)."""

from __future__ import annotations

import importlib.util

# The Triton kernels' module imports Triton at the top (the package reaches it only through boundfinder.gpu.load(),
# which copes with Triton missing); its doctest collection would fail where Triton is not installed.
collect_ignore = [] if importlib.util.find_spec("triton") else ["boundfinder/triton_kernels.py"]
