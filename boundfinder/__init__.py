"""boundfinder: emulate reduced numerical precision in PyTorch models and find the minimum safe precision."""

from __future__ import annotations

import os as _os

from boundfinder.errors import BoundfinderError, FormatError, PolicyError, StatisticsError

# In a source checkout the sub-packages callbacks/, search/ and reports/ sit beside this folder (pyproject maps
# them to boundfinder.callbacks, ... for installs). Extending __path__ lets a bare checkout on PYTHONPATH, or a
# second worktree, import them from its own tree instead of from whatever copy is installed.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "callbacks", "__init__.py")
):
    __path__.append(_root)  # noqa: F821 - __path__ is defined for packages

__version__ = "0.1.0"

__all__ = [
    "BoundfinderError",
    "FormatError",
    "PolicyError",
    "StatisticsError",
    "__version__",
]
