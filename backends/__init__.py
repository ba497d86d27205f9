"""Backend registry: built-in backends, plugins from the ``difftest.backends`` entry-point group, and
backends named by a spec ``MODULE:ATTR``.

A plugin's entry point names a callable returning a :class:`Backend` or a list of them.

A spec ``MODULE:ATTR`` (``MODULE:ATTR:FORMAT``, ``MODULE:ATTR:NAME``) names backends in your own
code without a package: ``MODULE`` is imported with the working directory first on the path (a
folder of that name there shadows an installed package), and ``ATTR`` is

* a :class:`Backend`, a :class:`Backend` subclass (instantiated), or a callable taking no
  argument that returns a :class:`Backend` or a list of them;
* or a plain function ``(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)``,
  judged in binary32, or in ``FORMAT``.

Every backend a spec gives is named by a spec that gives it back — ``MODULE:ATTR`` for one,
``MODULE:ATTR:NAME`` (its own name) for each of several, ``MODULE:ATTR:FORMAT`` for a function in
that format — so result lines, replay commands and worker processes (:mod:`difftest.isolation`)
find it again.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
from importlib.metadata import entry_points

from difftest.errors import UnknownBackend
from difftest.values.geometry import GRADIENTS

from .base import Backend
from .emu_backend import EmulatedBackend, FFTBackend, GatedBackend, emulated_backends, emulated_by_name
from .function_backend import FunctionBackend
from .jax_backend import JaxBackend, jax_backends
from .nf_backend import NFBackend, nf_backends
from .numpy_backend import NumpyBackend, numpy_backends
from .onnx_backend import OnnxRuntimeBackend, onnx_backends
from .tf_backend import TensorFlowBackend, tf_backends
from .torch_backend import TorchBackend, torch_backends

_FACTORIES = (numpy_backends, torch_backends, onnx_backends, jax_backends, tf_backends, nf_backends, emulated_backends)


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
        from difftest.values.formats import BINARY32

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


def _conv_function(obj) -> bool:
    """Whether ``obj`` is a plain conv-backward function (five positional parameters), not a factory."""
    try:
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 5 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _import_attr(spec: str, module: str, attr: str):
    """``MODULE.ATTR``, the module imported with the working directory first on the path."""
    here = os.getcwd()
    if here not in sys.path[:1]:
        sys.path.insert(0, here)
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise UnknownBackend(f"backend {spec}: cannot import {module} from {here} or the installed packages "
                             f"({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UnknownBackend(f"backend {spec}: importing {module} raised {type(exc).__name__}: {exc}") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnknownBackend(f"backend {spec}: {module} has no attribute {attr!r}") from None
    return obj


def spec_backends(spec: str) -> list[Backend]:
    """The backends a spec ``MODULE:ATTR[:FORMAT|:NAME]`` names (see the module docstring), each
    named by the spec that gives it back; :class:`UnknownBackend` says what is wrong with a bad one."""
    from difftest.values.formats import PRESETS

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise UnknownBackend(f"backend {spec!r}: a spec is MODULE:ATTR, MODULE:ATTR:FORMAT or MODULE:ATTR:NAME")
    module, attr, pick = parts[0], parts[1], (parts[2] if len(parts) == 3 else None)
    obj = _import_attr(spec, module, attr)
    base = f"{module}:{attr}"
    if callable(obj) and not isinstance(obj, (Backend, type)) and _conv_function(obj):
        if pick is not None and pick not in PRESETS:
            raise UnknownBackend(f"backend {spec}: {pick!r} is not a format; the formats are {', '.join(PRESETS)}")
        return [FunctionBackend(obj, pick or "binary32", name=spec)]
    made = obj
    try:
        if isinstance(obj, type) and issubclass(obj, Backend):
            made = obj()
        elif callable(obj) and not isinstance(obj, Backend):
            made = obj()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UnknownBackend(f"backend {spec}: calling {attr} raised {type(exc).__name__}: {exc}") from None
    made = list(made) if isinstance(made, (list, tuple)) else [made]
    bad = [m for m in made if not isinstance(m, Backend)]
    if bad or not made:
        raise UnknownBackend(f"backend {spec}: {attr} must be a Backend, a Backend subclass, a callable returning "
                             "Backends, or a function (x, w, d, stride, padding) -> (grad_input, grad_weight, "
                             f"grad_bias); got {type(bad[0] if bad else obj).__name__}")
    if len(made) == 1 and pick is None:
        return [_renamed(made[0], base)]
    named = {m.name: m for m in made}
    if pick is not None:
        if pick not in named:
            raise UnknownBackend(f"backend {spec}: {base} gives no backend named {pick!r}; it gives "
                                 f"{', '.join(sorted(named))}")
        return [_renamed(named[pick], spec)]
    return [_renamed(m, f"{base}:{m.name}") for m in made]


def _renamed(backend: Backend, name: str) -> Backend:
    if backend.name == name:
        return backend
    b = copy.copy(backend)
    b.name = name
    return b


def backends_named(name: str) -> list[Backend]:
    """Every backend ``name`` stands for: one for a registered name, all that a spec gives."""
    if ":" in name:
        return spec_backends(name)
    return [get_backend(name)]


def get_backend(name: str) -> Backend:
    """A backend by name (or by a spec ``MODULE:ATTR`` that gives exactly one); :class:`UnknownBackend`
    lists the known names."""
    if ":" in name:
        found = spec_backends(name)
        if len(found) > 1:
            raise UnknownBackend(f"backend {name} gives {len(found)} backends; name one: "
                                 f"{', '.join(b.name for b in found)}")
        return found[0]
    known = all_backends()
    if name in known:
        return known[name]
    built = emulated_by_name(name, known)  # emu-blocked-L, NAME@gates (raises on a bad gate)
    if built is not None:
        return built
    raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(sorted(known))} "
                         "(emulations also take a shape gate: emu-tf32@min-channels=32; your own code: MODULE:ATTR)")


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
    "Backend", "EmulatedBackend", "FFTBackend", "FunctionBackend", "GatedBackend", "JaxBackend", "NFBackend", "TensorFlowBackend", "NumpyBackend", "OnnxRuntimeBackend", "TorchBackend", "all_backends",
    "as_backend", "backends_named", "get_backend", "is_registered", "spec_backends",
]
