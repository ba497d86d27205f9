"""The exact NF reference: the gradients computed in TorchLean's own fold order and format."""

from __future__ import annotations

import math

from difftest.values.case import RuntimeInputs
from difftest.values.formats import PRESETS, Format
from difftest.values.geometry import GRADIENTS, Geometry
from difftest.maths.replay import replay

from .base import Backend


class NFBackend(Backend):
    """``nf-<format>``: one correct rounding per operation, TorchLean's fold orders, zero steps."""

    isolate = False  # the NF model itself: the judge's own code, run where the judge runs

    def __init__(self, fmt: Format):
        self.format = fmt
        self.name = f"nf-{fmt.name}"
        self.accumulation = "sequential, TorchLean fold order, one rounding per operation"
        self.description = f"exact NF model in {fmt.name} (emulated in float64)"

    @property
    def max_finite(self) -> float:
        """The NF model has no overflow: it holds every value of its format."""
        return math.inf

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        """Only the requested folds run (each is independent of the others)."""
        g = Geometry.of(x.shape, w.shape, stride, padding, dilation, groups)
        rt = RuntimeInputs(self.format, x, w, d, 0.0, 0.0, 0.0, rounded=False)
        return {name: value for name, (value, _) in replay(rt, g, gradients).items()}

    def version(self) -> str:
        from difftest import __version__

        return __version__


def nf_backends() -> list[Backend]:
    return [NFBackend(f) for f in PRESETS.values()]
