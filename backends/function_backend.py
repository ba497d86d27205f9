"""Your own Conv2D backward as a backend: a plain function and the format it claims."""

from __future__ import annotations

import numpy as np

from difftest.values.formats import Format, get_format
from difftest.values.geometry import GRADIENTS

from difftest.values.supports import Supports, accepts_keyword, of_function

from .base import Backend


class FunctionBackend(Backend):
    """``fn(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` judged in ``format``.

    ``fn`` receives float64 arrays holding values of ``format`` exactly and may return arrays of
    any real dtype (or anything ``numpy.asarray`` takes), as a tuple or as a dict with the
    gradient names. A function that takes a ``gradients`` keyword is told which gradients are
    requested (a tuple in ``GRADIENTS`` order) and may leave the others out (``None`` in the
    tuple); one that does not is called with five arguments. Only the requested gradients are
    returned. ``name`` defaults to the function's name.

    What it takes (:attr:`supports`) is what its signature says (:func:`difftest.supports.of_function`):
    five arguments are the spec's geometry, an integer stride and padding; a ``dilation`` or a
    ``groups`` keyword adds that feature (given as that keyword). ``supports=`` says it instead.
    """

    def __init__(self, fn, format: Format | str, name: str | None = None, supports: Supports | None = None):
        if not callable(fn):
            raise TypeError(f"a function backend needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.format = get_format(format)
        self.name = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        self.accumulation = "unknown (a user function)"
        self.description = f"the function {self.name}, claiming {self.format.name}"
        if supports is not None and not isinstance(supports, Supports):
            raise TypeError(f"supports must be a difftest.supports.Supports, got {type(supports).__name__}")
        self._supports = of_function(fn) if supports is None else supports

    @property
    def supports(self) -> Supports:
        return self._supports

    def takes(self, name: str) -> bool:
        """Whether the function takes the keyword ``name`` (``gradients``, ``dilation``, ``groups``)."""
        return accepts_keyword(self.fn, name)

    def conv2d_backward(self, x, w, d, stride, padding, **keywords):
        """The function, given the keywords it takes (:func:`difftest.backends.base.backward`
        passes only those)."""
        gradients = keywords.get("gradients", GRADIENTS)
        out = self.fn(x, w, d, stride, padding, **keywords)
        if not isinstance(out, dict):
            try:
                out = dict(zip(GRADIENTS, out, strict=True))
            except (TypeError, ValueError):
                raise TypeError(f"{self.name} must return (grad_input, grad_weight, grad_bias), "
                                f"got {type(out).__name__}") from None
        return {g: np.asarray(out[g]) for g in gradients if g in out}

    def version(self) -> str:
        return getattr(self.fn, "__module__", "") or ""
