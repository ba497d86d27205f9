"""The backend interface: compute Conv2D backward the way a framework's users really run it."""

from __future__ import annotations

import functools
import inspect
import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from difftest.formats import Format
from difftest.geometry import GRADIENTS


class Backend(ABC):
    """A Conv2D-backward implementation under test.

    ``format`` is the format whose bounds apply (its storage format). ``accumulation`` says,
    where known, how it accumulates. :meth:`conv2d_backward` receives float64 arrays holding
    values of ``format`` exactly and the requested gradients (a tuple in ``GRADIENTS`` order),
    and returns those of ``grad_input``, ``grad_weight``, ``grad_bias`` as exact float64 copies
    of what the backend computed. A backend written before gradients could be requested (five
    arguments, all three returned) still works: :func:`backward` calls it the old way and keeps
    what was requested.
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
        self, x: np.ndarray, w: np.ndarray, d: np.ndarray, stride: int, padding: int,
        gradients: tuple[str, ...] = GRADIENTS,
    ) -> dict[str, np.ndarray]:
        """Return the requested ``gradients`` (of ``grad_input``, ``grad_weight``,
        ``grad_bias``) as float64 arrays, computing only those, the way the framework's users
        would when they ask for only those."""

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


def accepts_gradients(fn) -> bool:
    """Whether ``fn`` (a conv2d_backward or a user function) takes a ``gradients`` keyword."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): the old, 5-argument way
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "gradients" and p.kind is not p.POSITIONAL_ONLY)
               for p in params)


@functools.lru_cache(maxsize=None)
def _class_accepts_gradients(cls: type) -> bool:
    return accepts_gradients(cls.conv2d_backward)


def backward(backend, x: np.ndarray, w: np.ndarray, d: np.ndarray, stride: int, padding: int,
             gradients: tuple[str, ...] = GRADIENTS) -> dict:
    """``backend.conv2d_backward`` for the requested ``gradients``, whatever its signature.

    A backend that takes ``gradients`` gets them; one written against the 5-argument signature
    (a plugin, the emulated references) computes all three. Either way the answer holds the
    requested gradients it returned and nothing else (a missing one is the caller's to judge).
    The signature is read once per class.
    """
    cls = type(backend)
    takes = (_class_accepts_gradients(cls) if hasattr(cls, "conv2d_backward")
             else accepts_gradients(backend.conv2d_backward))  # a method set on the object itself
    if takes:
        out = backend.conv2d_backward(x, w, d, stride, padding, gradients=gradients)
    else:
        out = backend.conv2d_backward(x, w, d, stride, padding)
    if not isinstance(out, Mapping):
        raise TypeError(f"{getattr(backend, 'name', backend)!r} returned {type(out).__name__}, "
                        "not a dict of gradients")
    return {g: out[g] for g in gradients if g in out}


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
