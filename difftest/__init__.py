"""difftest: real hardware floating point on trial against TorchLean's certified NF bounds."""

import os as _os

__version__ = "0.1.0"

# The design card puts backends/ and oracles/ at the top level; installed, they are
# difftest.backends and difftest.oracles (setuptools package-dir). In a source checkout that
# is not installed, let the same names resolve to the sibling folders.
_here = _os.path.dirname(__file__)
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "backends")) and _os.path.isfile(_os.path.join(_root, "backends", "__init__.py")):
    __path__.append(_root)

from .api import assert_within_bounds  # noqa: E402
from .case import Case, RuntimeInputs  # noqa: E402
from .errors import DifftestError, InvalidCase  # noqa: E402
from .formats import PRESETS, Format, get_format  # noqa: E402
from .geometry import GRADIENTS, Geometry  # noqa: E402

__all__ = [
    "assert_within_bounds", "Case", "RuntimeInputs", "DifftestError", "InvalidCase", "PRESETS", "Format", "get_format",
    "GRADIENTS", "Geometry", "__version__",
]
