"""Your own Conv2D backward as a backend: a plain function and the format it claims."""

from __future__ import annotations

import numpy as np

from difftest.formats import Format, get_format

from .base import Backend


class FunctionBackend(Backend):
    """``fn(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` judged in ``format``.

    ``fn`` receives float64 arrays holding values of ``format`` exactly and may return arrays of
    any real dtype (or anything ``numpy.asarray`` takes), as a tuple or as a dict with the three
    gradient names. ``name`` defaults to the function's name.
    """

    def __init__(self, fn, format: Format | str, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"a function backend needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.format = get_format(format)
        self.name = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        self.accumulation = "unknown (a user function)"
        self.description = f"the function {self.name}, claiming {self.format.name}"

    def conv2d_backward(self, x, w, d, stride, padding):
        out = self.fn(x, w, d, stride, padding)
        if isinstance(out, dict):
            return out
        try:
            gi, gw, gb = out
        except (TypeError, ValueError):
            raise TypeError(f"{self.name} must return (grad_input, grad_weight, grad_bias), "
                            f"got {type(out).__name__}") from None
        return {"grad_input": np.asarray(gi), "grad_weight": np.asarray(gw), "grad_bias": np.asarray(gb)}

    def version(self) -> str:
        return getattr(self.fn, "__module__", "") or ""
