"""The backend interface: compute Conv2D backward the way a framework's users really run it."""

from __future__ import annotations

import functools
import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from difftest.values.formats import Format
from difftest.values.geometry import GRADIENTS
from difftest.values.supports import Supports, accepts_keyword


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
    #: Whether the faces run it in a worker process (:mod:`difftest.isolation`): every backend but
    #: difftest's own references (``nf-*``, ``emu-*``), which are the judge's own mathematics.
    isolate: bool = True
    #: Modules its worker imports (its library); the fork server imports them once for every worker.
    preload: tuple[str, ...] = ()

    @property
    def supports(self) -> Supports:
        """The geometry beyond the spec's it computes (:mod:`difftest.supports`): campaigns draw for
        it only cases it takes, and ``check`` of another gives ``unsupported``. A subclass declares
        it (``supports = Supports(dilation=False, groups=False)``); by default it is read from
        :meth:`conv2d_backward`'s signature: dilation if it takes a ``dilation`` keyword; groups
        always (one without a ``groups`` keyword gets them one group at a time); per-axis pairs."""
        return Supports(dilation=_accepts(self, "dilation"))

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``."""
        return True, ""

    @abstractmethod
    def conv2d_backward(
        self, x: np.ndarray, w: np.ndarray, d: np.ndarray, stride, padding,
        gradients: tuple[str, ...] = GRADIENTS, dilation=1, groups: int = 1,
    ) -> dict[str, np.ndarray]:
        """Return the requested ``gradients`` (of ``grad_input``, ``grad_weight``,
        ``grad_bias``) as float64 arrays, computing only those, the way the framework's users
        would when they ask for only those. ``stride``, ``padding`` and ``dilation`` are an
        integer or a pair ``(h, w)``; the weight is ``(O, C/groups, kH, kW)``."""

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


def missing_library(module: str, extra: str) -> str:
    """Why ``module`` cannot be imported, and the extra that installs it ("" when it imports)."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"{module} is not importable ({type(exc).__name__}: {exc}); pip install -e '.[{extra}]'"
    return ""


def read_environment(backend) -> dict:
    """``backend.environment()``, or, where it cannot be read, the backend's name and why."""
    try:
        return backend.environment()
    except Exception as exc:  # what ran cannot be read: say so, and go on
        return {"backend": getattr(backend, "name", "?"), "environment_error": f"{type(exc).__name__}: {exc}"}


@functools.lru_cache(maxsize=None)
def _class_accepts(cls: type, name: str) -> bool:
    return accepts_keyword(cls.conv2d_backward, name)


def _accepts(backend, name: str) -> bool:
    """Whether ``backend.conv2d_backward`` takes the keyword ``name`` (a backend wrapping another
    callable says so itself, with a ``takes(name)`` method)."""
    takes = getattr(backend, "takes", None)
    if callable(takes):
        return bool(takes(name))
    cls = type(backend)
    if hasattr(cls, "conv2d_backward"):
        return _class_accepts(cls, name)
    return accepts_keyword(backend.conv2d_backward, name)  # a method set on the object itself


def backward(backend, x: np.ndarray, w: np.ndarray, d: np.ndarray, stride, padding,
             gradients: tuple[str, ...] = GRADIENTS, dilation=1, groups: int = 1) -> dict:
    """``backend.conv2d_backward`` for the requested ``gradients``, whatever its signature.

    A backend that takes ``gradients`` gets them; one written against the 5-argument signature
    (a plugin, the emulated references) computes all three. Either way the answer holds the
    requested gradients it returned and nothing else (a missing one is the caller's to judge).
    ``dilation`` and ``groups`` go to a backend that takes them. One that does not gets a
    grouped convolution one group at a time (groups are independent convolutions, so this is
    what it would compute), the results joined; a dilated one it cannot compute raises
    :class:`TypeError`. Signatures are read once per class.
    """
    if groups != 1 and not _accepts(backend, "groups"):
        return _group_by_group(backend, x, w, d, stride, padding, gradients, dilation, groups)
    kwargs = {}
    if groups != 1:
        kwargs["groups"] = groups
    if dilation != 1:
        if not _accepts(backend, "dilation"):
            raise TypeError(f"{getattr(backend, 'name', backend)!r} takes no dilation (its conv2d_backward has no "
                            "dilation keyword), so it cannot compute a dilated convolution")
        kwargs["dilation"] = dilation
    if _accepts(backend, "gradients"):
        kwargs["gradients"] = gradients
    out = backend.conv2d_backward(x, w, d, stride, padding, **kwargs)
    if not isinstance(out, Mapping):
        raise TypeError(f"{getattr(backend, 'name', backend)!r} returned {type(out).__name__}, "
                        "not a dict of gradients")
    return {g: out[g] for g in gradients if g in out}


def _group_by_group(backend, x, w, d, stride, padding, gradients, dilation, groups: int) -> dict:
    """A grouped convolution as ``groups`` ungrouped ones (each group's channels), joined."""
    from difftest.values.geometry import Geometry

    g = Geometry.of(x.shape, w.shape, stride, padding, dilation, groups)
    parts = [backward(backend, xg, wg, dg, stride, padding, gradients, dilation)
             for xg, wg, dg in g.split_groups(x, w, d)]
    axis = {"grad_input": 1, "grad_weight": 0, "grad_bias": 0}
    return {name: np.concatenate([p[name] for p in parts], axis=axis[name])
            for name in gradients if all(name in p for p in parts)}


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
