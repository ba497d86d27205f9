"""Emulated reference backends (``emu-*``): documented arithmetic that is *not* binary32, claiming binary32.

Each computes Conv2D backward exactly as its description says, so a test, a fingerprint or a
campaign knows what the right verdict is: every one of them breaks binary32's order-free bound
on suitable cases (``precision``). They are references for the harness, never stand-ins for a
missing library, and ``difftest run`` leaves them out unless named.

* ``emu-tf32`` — inputs rounded to TF32 (11 significant bits, to nearest), exact products,
  binary32 accumulation: what tensor cores do with PyTorch's TF32 on;
* ``emu-binary16-acc``, ``emu-bfloat16-acc`` — binary32 products accumulated in binary16 /
  bfloat16 (rounded to nearest at each step; beyond the format's range: inf);
* ``emu-ftz`` — binary32 arithmetic with subnormal inputs read as zero (DAZ) and subnormal
  results flushed to zero (FTZ);
* ``emu-rtz-acc`` — binary32 products accumulated with truncation (rounding toward zero), as
  tensor cores align and truncate;
* ``emu-fft`` — the convolutions through binary32 FFTs (numpy's float32 FFT): errors scale
  with the tensor's norm, not with each entry.

The folds run sequentially along each GEMM's inner dimension (``difftest.geometry``'s operand
layout), with exact error-free transformations for every rounding (``difftest.fparith``).
"""

from __future__ import annotations

import numpy as np

from difftest.formats import BFLOAT16, BINARY16, BINARY32, TF32, Format
from difftest.fparith import nf_add, nf_mul, two_sum
from difftest.geometry import GRADIENTS, Geometry, gemm_operands, gemm_result_to_gradient

from .base import Backend

_MIN_NORMAL32 = 2.0**-126


def _overflow(fmt: Format, v: np.ndarray) -> np.ndarray:
    """IEEE overflow of a rounded value: beyond the largest finite value is inf."""
    return np.where(np.abs(v) > fmt.max_finite, np.copysign(np.inf, v), v)


def _add_nearest(fmt: Format):
    return lambda acc, p: _overflow(fmt, nf_add(fmt, acc, p))


def _add_toward_zero(acc: np.ndarray, p: np.ndarray) -> np.ndarray:
    """binary32 sum truncated toward zero: round to nearest, step back where that went outwards."""
    s, e = two_sum(acc, p)  # the exact sum is s + e
    r = BINARY32.round_array(s)  # RN(s); RN of the exact sum differs only where truncation matters
    d = r - s  # exact: r and s are within one binary32 ulp
    outwards = np.where(s + e > 0, d > e, d < e) & (s + e != 0)
    step = np.nextafter(r.astype(np.float32), np.float32(0)).astype(np.float64)
    return _overflow(BINARY32, np.where(outwards, step, r))


def _flush(v: np.ndarray) -> np.ndarray:
    return np.where(np.abs(v) < _MIN_NORMAL32, np.copysign(0.0, v), v)


def _fold(a: np.ndarray, b: np.ndarray, mul, add) -> np.ndarray:
    """``a @ b`` folded sequentially along the inner dimension: ``acc = add(acc, mul(a_k, b_k))``."""
    acc = np.zeros((a.shape[0], b.shape[1]))
    for k in range(a.shape[1]):
        acc = add(acc, mul(a[:, k : k + 1], b[k : k + 1, :]))
    return acc


class EmulatedBackend(Backend):
    """A sequential fold with the products and sums of ``mul``/``add``, claiming binary32."""

    device = "cpu"
    default_campaign = False

    def __init__(self, name: str, description: str, mul, add, inputs=lambda a: a, outputs=lambda a: a):
        self.name, self.description, self.format = name, description, BINARY32
        self.accumulation = description
        self._mul, self._add, self._inputs, self._outputs = mul, add, inputs, outputs

    def conv2d_backward(self, x, w, d, stride, padding):
        g = Geometry(*x.shape, w.shape[0], w.shape[2], w.shape[3], stride, padding)
        x, w, d = (self._inputs(np.asarray(t, dtype=np.float64)) for t in (x, w, d))
        ops = gemm_operands(x, w, d, g)
        with np.errstate(over="ignore", invalid="ignore"):
            return {name: self._outputs(gemm_result_to_gradient(name, _fold(*ops[name], self._mul, self._add), g))
                    for name in GRADIENTS}

    def version(self) -> str:
        from difftest import __version__

        return __version__


class FFTBackend(Backend):
    """``emu-fft``: the weight and input gradients as binary32 FFT correlations and convolutions."""

    name = "emu-fft"
    device = "cpu"
    default_campaign = False
    format = BINARY32
    accumulation = "FFT convolution in binary32 (numpy's float32 FFT); bias: numpy's float32 sum"
    description = "Conv2D backward through binary32 FFTs: errors scale with the tensor's norm"

    def conv2d_backward(self, x, w, d, stride, padding):
        g = Geometry(*x.shape, w.shape[0], w.shape[2], w.shape[3], stride, padding)
        s, p = g.stride, g.padding
        hp, wp = g.H + 2 * p, g.W + 2 * p
        xp = np.zeros((g.N, g.C, hp, wp), dtype=np.float32)
        xp[:, :, p : p + g.H, p : p + g.W] = x
        du = np.zeros((g.N, g.O, hp, wp), dtype=np.float32)  # δ spread over the stride grid
        du[:, :, : (g.out_h - 1) * s + 1 : s, : (g.out_w - 1) * s + 1 : s] = d
        wk = np.zeros((g.O, g.C, hp, wp), dtype=np.float32)
        wk[:, :, : g.kH, : g.kW] = w
        fx, fd, fw = (np.fft.rfft2(t) for t in (xp, du, wk))
        # grad_weight[o, c] = Σ_n corr(δ_up[n, o], x_pad[n, c]) at lags below the kernel size
        gw = np.fft.irfft2(np.einsum("nohw,nchw->ochw", np.conj(fd), fx), s=(hp, wp))[:, :, : g.kH, : g.kW]
        # grad_input_pad[n, c] = Σ_o δ_up[n, o] * w[o, c] (full convolution), cropped to the input
        gi = np.fft.irfft2(np.einsum("nohw,ochw->nchw", fd, fw), s=(hp, wp))[:, :, p : p + g.H, p : p + g.W]
        gb = np.asarray(d, dtype=np.float32).sum(axis=(0, 2, 3))
        return {"grad_input": gi.astype(np.float32).astype(np.float64),
                "grad_weight": gw.astype(np.float32).astype(np.float64),
                "grad_bias": gb.astype(np.float64)}

    def version(self) -> str:
        return np.__version__


def emulated_backends() -> list[Backend]:
    mul32 = lambda a, b: nf_mul(BINARY32, a, b)  # noqa: E731
    exact_mul = lambda a, b: a * b  # noqa: E731  (11-bit TF32 significands: exact in float64)
    return [
        EmulatedBackend("emu-tf32", "inputs rounded to TF32, exact products, binary32 accumulation",
                        exact_mul, _add_nearest(BINARY32), inputs=TF32.round_array),
        EmulatedBackend("emu-binary16-acc", "binary32 products accumulated in binary16",
                        mul32, _add_nearest(BINARY16)),
        EmulatedBackend("emu-bfloat16-acc", "binary32 products accumulated in bfloat16",
                        mul32, _add_nearest(BFLOAT16)),
        EmulatedBackend("emu-ftz", "binary32 with subnormal inputs read as zero and subnormal results flushed",
                        lambda a, b: _flush(mul32(a, b)), lambda acc, p: _flush(_add_nearest(BINARY32)(acc, p)),
                        inputs=_flush),
        EmulatedBackend("emu-rtz-acc", "binary32 products accumulated with truncation (round toward zero)",
                        mul32, _add_toward_zero),
        FFTBackend(),
    ]
