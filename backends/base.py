"""The backend interface: compute Conv2D backward the way a framework's users really run it."""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod

import numpy as np

from difftest.formats import Format


class Backend(ABC):
    """A Conv2D-backward implementation under test.

    ``format`` is the format whose bounds apply (its storage format). ``accumulation`` says,
    where known, how it accumulates. :meth:`conv2d_backward` receives float64 arrays holding
    values of ``format`` exactly and returns ``grad_input``, ``grad_weight``, ``grad_bias`` as
    exact float64 copies of what the backend computed.
    """

    name: str = ""
    format: Format
    device: str = "cpu"
    accumulation: str = ""
    description: str = ""
    #: Whether ``difftest run`` takes it when no backend is named (emulated references are not).
    default_campaign: bool = True

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``."""
        return True, ""

    @abstractmethod
    def conv2d_backward(
        self, x: np.ndarray, w: np.ndarray, d: np.ndarray, stride: int, padding: int
    ) -> dict[str, np.ndarray]:
        """Return ``{"grad_input", "grad_weight", "grad_bias"}`` as float64 arrays."""

    @property
    def max_finite(self) -> float:
        """The largest magnitude this backend's storage holds: the IEEE counterpart's largest
        finite value of ``format``. Inputs beyond it give ``domain`` without running."""
        return self.format.max_finite

    def version(self) -> str:
        return np.__version__

    def environment(self) -> dict:
        """What ran: library versions, device, CPU, threads."""
        return {
            "backend": self.name,
            "format": self.format.name,
            "device": self.device,
            "accumulation": self.accumulation,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpu_count": os.cpu_count(),
        }


def _cpuinfo_field(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


#: CPU features that change what floating-point kernels compute (FMA, vector widths, bf16/fp16 units).
_NUMERIC_FLAGS = ("fma", "avx", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "f16c", "asimd", "sve")


def cpu_flags() -> list[str]:
    """The numerically relevant CPU feature flags present here."""
    flags = set((_cpuinfo_field("flags") or _cpuinfo_field("Features")).split())
    return [f for f in _NUMERIC_FLAGS if f in flags]
