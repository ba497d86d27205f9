"""Backend registry: built-in backends plus plugins from the ``difftest.backends`` entry-point group.

A plugin's entry point names a callable returning a :class:`Backend` or a list of them.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from difftest.errors import UnknownBackend
from difftest.geometry import GRADIENTS

from .base import Backend
from .emu_backend import EmulatedBackend, FFTBackend, GatedBackend, emulated_backends, emulated_by_name
from .function_backend import FunctionBackend
from .nf_backend import NFBackend, nf_backends
from .numpy_backend import NumpyBackend, numpy_backends
from .onnx_backend import OnnxRuntimeBackend, onnx_backends
from .torch_backend import TorchBackend, torch_backends

_FACTORIES = (numpy_backends, torch_backends, onnx_backends, nf_backends, emulated_backends)


def _plugins() -> list[Backend]:
    found: list[Backend] = []
    for ep in entry_points(group="difftest.backends"):
        try:
            made = ep.load()()
        except Exception as exc:  # a broken plugin must not break the others
            found.append(_Broken(ep.name, f"plugin {ep.value} failed to load: {exc}"))
            continue
        found.extend(made if isinstance(made, (list, tuple)) else [made])
    return found


class _Broken(Backend):
    def __init__(self, name: str, reason: str):
        from difftest.formats import BINARY32

        self.name, self.format, self._reason = name, BINARY32, reason

    def availability(self):
        return False, self._reason

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):  # pragma: no cover - never available
        raise RuntimeError(self._reason)


def all_backends() -> dict[str, Backend]:
    """Every known backend by name (available or not)."""
    out: dict[str, Backend] = {}
    for factory in _FACTORIES:
        for b in factory():
            out[b.name] = b
    for b in _plugins():
        out.setdefault(b.name, b)
    return out


def get_backend(name: str) -> Backend:
    """A backend by name; :class:`UnknownBackend` lists the known names."""
    known = all_backends()
    if name in known:
        return known[name]
    built = emulated_by_name(name, known)  # emu-blocked-L, NAME@gates (raises on a bad gate)
    if built is not None:
        return built
    raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(sorted(known))} "
                         "(emulations also take a shape gate: emu-tf32@min-channels=32)")


def is_registered(name: str) -> bool:
    """Whether ``name`` is a built-in or plugin backend, or an emulation built from its name (so
    ``difftest check --backend NAME`` runs it)."""
    try:
        get_backend(name)
    except UnknownBackend:
        return False
    return True


def as_backend(obj, format=None) -> Backend:
    """A backend from what a user has at hand: a :class:`Backend`, a registered name, a plain
    function ``(x, w, d, stride, padding) -> (gi, gw, gb)`` judged in ``format``, or a
    ``(function, format)`` pair."""
    if isinstance(obj, str):
        return get_backend(obj)
    if isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]):
        return FunctionBackend(obj[0], obj[1])
    if hasattr(obj, "conv2d_backward") and hasattr(obj, "format"):
        return obj
    if callable(obj):
        if format is None:
            raise TypeError("a plain function backend needs the format it claims (format=...)")
        return FunctionBackend(obj, format)
    raise TypeError(f"not a backend: {obj!r} (give a Backend, a backend name, a function or a (function, format) pair)")


__all__ = [
    "Backend", "EmulatedBackend", "FFTBackend", "FunctionBackend", "GatedBackend", "NFBackend", "NumpyBackend", "OnnxRuntimeBackend", "TorchBackend", "all_backends",
    "as_backend", "get_backend", "is_registered",
]
