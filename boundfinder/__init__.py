"""boundfinder: emulate reduced numerical precision in PyTorch models and find the minimum safe precision."""

from __future__ import annotations

import os as _os

from boundfinder.emulation import Emulation, emulate
from boundfinder.errors import BoundfinderError, FormatError, PolicyError, StatisticsError
from boundfinder.formats import (
    ROUNDING_MODES,
    BinaryFormat,
    BlockFormat,
    DynamicFixedPointFormat,
    FixedPointFormat,
    FloatFormat,
    Format,
    IntFormat,
    format_names,
    parse_format,
)
from boundfinder.policy import ROLES, PrecisionPolicy, Rule
from boundfinder.quantize import affine_qparams, fake_quantize_affine, quantize, quantize_ste

# In a source checkout the sub-packages callbacks/, search/ and reports/ sit beside this folder (pyproject maps
# them to boundfinder.callbacks, ... for installs). Extending __path__ lets a bare checkout on PYTHONPATH, or a
# second worktree, import them from its own tree instead of from whatever copy is installed.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "callbacks", "__init__.py")
):
    __path__.append(_root)

__version__ = "0.1.0"

__all__ = [
    "ROLES",
    "ROUNDING_MODES",
    "BinaryFormat",
    "BlockFormat",
    "BoundfinderError",
    "DynamicFixedPointFormat",
    "Emulation",
    "FixedPointFormat",
    "FloatFormat",
    "Format",
    "FormatError",
    "IntFormat",
    "PolicyError",
    "PrecisionPolicy",
    "Rule",
    "StatisticsError",
    "__version__",
    "affine_qparams",
    "emulate",
    "fake_quantize_affine",
    "format_names",
    "parse_format",
    "quantize",
    "quantize_ste",
]
