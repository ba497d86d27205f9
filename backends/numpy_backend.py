"""numpy backends: im2col + matmul, the way numpy users write Conv2D backward."""

from __future__ import annotations

import numpy as np

from difftest.values.formats import BFLOAT16, BINARY16, BINARY32, BINARY64, Format
from difftest.values.geometry import GRADIENTS, Geometry
from difftest.maths.layouts import col2im_add, grad_output_rows, im2col

from .base import Backend


class NumpyBackend(Backend):
    """``grad_weight = δ_rows @ im2col(x)``, ``grad_input = col2im(δ_rowsᵀ @ w_rows)``,
    ``grad_bias = δ_rows.sum(1)``, all in ``dtype``."""

    preload = ("ml_dtypes",)  # numpy-bfloat16's storage (absent: nothing to preload)

    def __init__(self, name: str, dtype, fmt: Format, accumulation: str):
        self.name = name
        self._dtype = dtype  # a numpy dtype, or a callable returning one (optional packages)
        self.format = fmt
        self.accumulation = accumulation
        self.description = f"numpy {name.split('-', 1)[1]}: im2col + matmul, results stored in that dtype"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype() if callable(self._dtype) else self._dtype)

    def availability(self) -> tuple[bool, str]:
        try:
            self.dtype
        except ImportError as exc:
            return False, f"{exc.name or 'a package'} is not installed; pip install 'difftest[bfloat16]'"
        return True, ""

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        # overflow to inf is what the verdict judges (domain or precision), not a warning to print
        with np.errstate(over="ignore", invalid="ignore"):
            return self._backward(x, w, d, Geometry.of(x.shape, w.shape, stride, padding, dilation, groups), gradients)

    def _backward(self, x, w, d, g: Geometry, gradients):
        """Only the requested gradients are computed (each from δ and one other tensor); groups
        are one batched matmul (``numpy.matmul`` over the group axis)."""
        dtype = self.dtype
        xt, wt, dt = (np.asarray(a).astype(dtype) for a in (x, w, d))
        for name, a, t in (("input", x, xt), ("weight", w, wt), ("grad_output", d, dt)):
            if not np.array_equal(t.astype(np.float64), a):
                raise ValueError(f"{name} is not exactly representable in numpy {dtype}")
        G = g.groups
        drows = grad_output_rows(dt, g)  # (O, N·oh·ow)
        dgroups = drows.reshape(G, g.Og, -1)  # (G, Og, N·oh·ow)

        def grad_input():
            cols = np.swapaxes(dgroups, 1, 2) @ wt.reshape(G, g.Og, -1)  # (G, N·oh·ow, Cg·kH·kW)
            cols = cols.transpose(1, 0, 2).reshape(cols.shape[1], -1)  # columns (c, di, dj), c = group·Cg + local
            return col2im_add(cols.astype(dtype), g)  # added back into the image

        def grad_weight():
            cols = im2col(xt, g)
            cols = cols.reshape(cols.shape[0], G, -1).transpose(1, 0, 2)  # (G, N·oh·ow, Cg·kH·kW)
            return (dgroups @ cols).astype(dtype).reshape(g.weight_shape)

        compute = {"grad_input": grad_input, "grad_weight": grad_weight, "grad_bias": lambda: drows.sum(axis=1)}
        return {name: compute[name]().astype(np.float64) for name in gradients}


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def numpy_backends() -> list[Backend]:
    return [
        NumpyBackend("numpy-float32", np.float32, BINARY32, "float32 BLAS GEMM (blocked, FMA); pairwise sum"),
        NumpyBackend("numpy-float64", np.float64, BINARY64, "float64 BLAS GEMM (blocked, FMA); pairwise sum"),
        NumpyBackend("numpy-float16", np.float16, BINARY16, "float16 matmul accumulates in float32; float16 col2im and sum"),
        NumpyBackend("numpy-bfloat16", _bfloat16, BFLOAT16,
                     "ml_dtypes bfloat16 matmul accumulates and returns float32, stored as bfloat16; "
                     "bfloat16 col2im; bias summed sequentially in bfloat16"),
    ]
