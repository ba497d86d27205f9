"""difftest: real hardware floating point on trial against TorchLean's certified NF bounds."""

__version__ = "0.1.0"

from .case import Case, RuntimeInputs  # noqa: E402
from .errors import DifftestError, InvalidCase  # noqa: E402
from .formats import PRESETS, Format, get_format  # noqa: E402
from .geometry import GRADIENTS, Geometry  # noqa: E402

__all__ = ["Case", "RuntimeInputs", "DifftestError", "InvalidCase", "PRESETS", "Format", "get_format", "GRADIENTS", "Geometry", "__version__"]
