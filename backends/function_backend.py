"""Your own Conv2D backward as a backend: a plain function and the format it claims."""

from __future__ import annotations

import numpy as np

from difftest.formats import Format, get_format
from difftest.geometry import GRADIENTS

from .base import Backend, accepts_gradients


class FunctionBackend(Backend):
    """``fn(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` judged in ``format``.

    ``fn`` receives float64 arrays holding values of ``format`` exactly and may return arrays of
    any real dtype (or anything ``numpy.asarray`` takes), as a tuple or as a dict with the
    gradient names. A function that takes a ``gradients`` keyword is told which gradients are
    requested (a tuple in ``GRADIENTS`` order) and may leave the others out (``None`` in the
    tuple); one that does not is called with five arguments. Only the requested gradients are
    returned. ``name`` defaults to the function's name.
    """

    def __init__(self, fn, format: Format | str, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"a function backend needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.format = get_format(format)
        self.name = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        self.accumulation = "unknown (a user function)"
        self.description = f"the function {self.name}, claiming {self.format.name}"
        self._takes_gradients = accepts_gradients(fn)

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):
        if self._takes_gradients:
            out = self.fn(x, w, d, stride, padding, gradients=gradients)
        else:
            out = self.fn(x, w, d, stride, padding)
        if not isinstance(out, dict):
            try:
                out = dict(zip(GRADIENTS, out, strict=True))
            except (TypeError, ValueError):
                raise TypeError(f"{self.name} must return (grad_input, grad_weight, grad_bias), "
                                f"got {type(out).__name__}") from None
        return {g: np.asarray(out[g]) for g in gradients if g in out}

    def version(self) -> str:
        return getattr(self.fn, "__module__", "") or ""
