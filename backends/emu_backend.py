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

Two more are binary32 done right, for contrast (they never break the order-free bound, and a
campaign that says otherwise is wrong):

* ``emu-binary32`` — binary32 products and round-to-nearest sums, folded sequentially along each
  GEMM's inner dimension: the spec's order for the weight and bias gradients; the input
  gradient's folds run tap by tap, ``(di, dj, o)``, where the spec's run ``(o, di, dj)``, so
  that gradient can get ``order``;
* ``emu-blocked-L`` (any block length ``L >= 2``; ``emu-blocked-8`` is listed) — each block of
  ``L`` consecutive products summed in binary32, the block sums added in turn: a K-split GEMM.
  Its rounding differs from the sequential order's (``order`` verdicts), never beyond
  binary32's order-free bound.

**Shape gates.** Libraries switch kernels by shape, so each ``emu-*`` name takes conditions
after ``@``: ``emu-tf32@min-channels=32`` computes like ``emu-tf32`` for a gradient when both
channel counts are at least 32 and like ``numpy-float32`` (an ordinary binary32 kernel)
otherwise. Conditions are ``min-X=V`` (X >= V) or ``max-X=V`` (X <= V), joined by commas, for
X in :data:`GATES`: ``channels`` (the smaller of C and O), ``in-channels``, ``out-channels``,
``kernel`` (the larger kernel side), ``image`` (the smaller input side), ``stride``, ``batch``
and ``reduction`` (the gradient's sum length: O·kH·kW for the input gradient, N·out_h·out_w
for the others). Example: ``emu-fft@min-kernel=5,min-image=32``.

The folds run sequentially along each GEMM's inner dimension (``difftest.geometry``'s operand
layout), with exact error-free transformations for every rounding (``difftest.fparith``).
"""

from __future__ import annotations

import re

import numpy as np

from difftest.errors import UnknownBackend
from difftest.values.formats import BFLOAT16, BINARY16, BINARY32, TF32, Format
from difftest.values.fparith import nf_add, nf_mul, two_sum
from difftest.values.geometry import GRADIENTS, Geometry
from difftest.maths.layouts import gemm_operands, gemm_result_to_gradient, gemm_shape

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


def _fold(a: np.ndarray, b: np.ndarray, mul, add, block: int | None = None) -> np.ndarray:
    """``a @ b`` folded sequentially along the inner dimension: ``acc = add(acc, mul(a_k, b_k))``;
    with ``block``, each run of ``block`` products is folded on its own (starting from its first
    product) and added to ``acc`` as one term."""
    K = a.shape[-1]
    step = K if block is None else block
    acc = np.zeros(a.shape[:-1] + b.shape[-1:])
    for start in range(0, K, step):
        part = mul(a[..., start : start + 1], b[..., start : start + 1, :])
        for k in range(start + 1, min(start + step, K)):
            part = add(part, mul(a[..., k : k + 1], b[..., k : k + 1, :]))
        acc = part if start == 0 else add(acc, part)
    return acc


class EmulatedBackend(Backend):
    """A sequential fold with the products and sums of ``mul``/``add``, claiming binary32."""

    device = "cpu"
    default_campaign = False
    isolate = False  # difftest's own reference: the judge's code, run where the judge runs

    def __init__(self, name: str, description: str, mul, add, inputs=lambda a: a, outputs=lambda a: a,
                 block: int | None = None):
        self.name, self.description, self.format = name, description, BINARY32
        self.accumulation = description
        self._mul, self._add, self._inputs, self._outputs, self.block = mul, add, inputs, outputs, block

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        g = Geometry.of(x.shape, w.shape, stride, padding, dilation, groups)
        x, w, d = (self._inputs(np.asarray(t, dtype=np.float64)) for t in (x, w, d))
        ops = gemm_operands(x, w, d, g, gradients)
        with np.errstate(over="ignore", invalid="ignore"):
            return {name: self._outputs(gemm_result_to_gradient(
                name, _fold(*ops[name], self._mul, self._add, self.block), g)) for name in gradients}

    def version(self) -> str:
        from difftest import __version__

        return __version__


class FFTBackend(Backend):
    """``emu-fft``: the weight and input gradients as binary32 FFT correlations and convolutions."""

    name = "emu-fft"
    device = "cpu"
    default_campaign = False
    isolate = False  # difftest's own reference: the judge's code, run where the judge runs
    format = BINARY32
    accumulation = "FFT convolution in binary32 (numpy's float32 FFT); bias: numpy's float32 sum"
    description = "Conv2D backward through binary32 FFTs: errors scale with the tensor's norm"

    def conv2d_backward(self, x, w, d, stride, padding, dilation=1):
        """One group (grouped cases come group by group, :func:`~difftest.backends.base.backward`)."""
        g = Geometry.of(x.shape, w.shape, stride, padding, dilation)
        (sh, sw), (ph, pw), (dh, dw) = (g.sh, g.sw), (g.ph, g.pw), (g.dh, g.dw)
        hp, wp = g.H + 2 * ph, g.W + 2 * pw
        xp = np.zeros((g.N, g.C, hp, wp), dtype=np.float32)
        xp[:, :, ph : ph + g.H, pw : pw + g.W] = x
        du = np.zeros((g.N, g.O, hp, wp), dtype=np.float32)  # δ spread over the stride grid
        du[:, :, : (g.out_h - 1) * sh + 1 : sh, : (g.out_w - 1) * sw + 1 : sw] = d
        wk = np.zeros((g.O, g.C, hp, wp), dtype=np.float32)  # the kernel spread over the dilation grid
        taps_h, taps_w = slice(0, (g.kH - 1) * dh + 1, dh), slice(0, (g.kW - 1) * dw + 1, dw)
        wk[:, :, taps_h, taps_w] = w
        fx, fd, fw = (np.fft.rfft2(t) for t in (xp, du, wk))
        # grad_weight[o, c] = Σ_n corr(δ_up[n, o], x_pad[n, c]) at the kernel's (dilated) lags
        gw = np.fft.irfft2(np.einsum("nohw,nchw->ochw", np.conj(fd), fx), s=(hp, wp))[:, :, taps_h, taps_w]
        # grad_input_pad[n, c] = Σ_o δ_up[n, o] * w[o, c] (full convolution), cropped to the input
        gi = np.fft.irfft2(np.einsum("nohw,ochw->nchw", fd, fw), s=(hp, wp))[:, :, ph : ph + g.H, pw : pw + g.W]
        gb = np.asarray(d, dtype=np.float32).sum(axis=(0, 2, 3))
        return {"grad_input": gi.astype(np.float32).astype(np.float64),
                "grad_weight": gw.astype(np.float32).astype(np.float64),
                "grad_bias": gb.astype(np.float64)}

    def version(self) -> str:
        return np.__version__


def _mul32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return nf_mul(BINARY32, a, b)


def blocked_backend(block: int) -> EmulatedBackend:
    """``emu-blocked-L``: binary32 with the inner dimension folded in blocks of ``block``."""
    return EmulatedBackend(f"emu-blocked-{block}", f"binary32, sums folded in blocks of {block} (K-split GEMM)",
                           _mul32, _add_nearest(BINARY32), block=block)


def emulated_backends() -> list[Backend]:
    mul32 = _mul32
    exact_mul = lambda a, b: a * b  # noqa: E731  (11-bit TF32 significands: exact in float64)
    return [
        EmulatedBackend("emu-binary32", "binary32 products and sums, sequential folds (input gradient tap by tap)",
                        mul32, _add_nearest(BINARY32)),
        blocked_backend(8),
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


# --- shape gates ---------------------------------------------------------------------------

#: What a gate condition can test, per gradient of a geometry.
GATES = {
    "channels": lambda g, grad: min(g.C, g.O),
    "in-channels": lambda g, grad: g.C,
    "out-channels": lambda g, grad: g.O,
    "kernel": lambda g, grad: max(g.kH, g.kW),
    "image": lambda g, grad: min(g.H, g.W),
    "stride": lambda g, grad: max(g.sh, g.sw),
    "batch": lambda g, grad: g.N,
    "reduction": lambda g, grad: gemm_shape(grad, g)[2],
}

_CONDITION = re.compile(r"(min|max)-([a-z-]+)=(\d+)")


def parse_gates(text: str) -> tuple[tuple[str, str, int], ...]:
    """``"min-channels=32,max-image=32"`` -> ``(("min", "channels", 32), ("max", "image", 32))``."""
    out = []
    for part in text.split(","):
        m = _CONDITION.fullmatch(part.strip())
        if not m or m.group(2) not in GATES:
            raise UnknownBackend(
                f"shape gate {part.strip()!r}: write min-X=V or max-X=V (V an integer), joined by commas, "
                f"with X one of {', '.join(GATES)} (e.g. emu-tf32@min-channels=32,max-image=32)")
        out.append((m.group(1), m.group(2), int(m.group(3))))
    return tuple(out)


class GatedBackend(Backend):
    """An ``emu-*`` backend that computes as ``inner`` only where the shape gate opens (per
    gradient) and as ``fallback`` (an ordinary binary32 kernel) elsewhere: a library's kernel
    switch, for testing that campaigns reach the shapes where fast paths run."""

    device = "cpu"
    default_campaign = False
    isolate = False  # difftest's own reference: the judge's code, run where the judge runs
    format = BINARY32

    def __init__(self, inner: Backend, fallback: Backend, gates: str):
        self.inner, self.fallback, self.gates = inner, fallback, parse_gates(gates)
        self.name = f"{inner.name}@{gates}"
        self.accumulation = f"{inner.accumulation} where {gates}; else {fallback.name}"
        self.description = f"{inner.name} where {gates.replace(',', ' and ')}, {fallback.name} elsewhere"

    def opens(self, g: Geometry, gradient: str) -> bool:
        """Whether the gate opens for ``gradient`` of geometry ``g``."""
        return all((GATES[x](g, gradient) >= v) if side == "min" else (GATES[x](g, gradient) <= v)
                   for side, x, v in self.gates)

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS, dilation=1, groups=1):
        from .base import backward

        g = Geometry.of(x.shape, w.shape, stride, padding, dilation, groups)
        inner = tuple(grad for grad in gradients if self.opens(g, grad))
        outer = tuple(grad for grad in gradients if grad not in inner)
        fast = backward(self.inner, x, w, d, stride, padding, inner, dilation, groups) if inner else {}
        slow = backward(self.fallback, x, w, d, stride, padding, outer, dilation, groups) if outer else {}
        return {**fast, **slow}

    def availability(self):
        return self.inner.availability()

    def version(self) -> str:
        return self.inner.version()


def emulated_by_name(name: str, known: dict) -> Backend | None:
    """An ``emu-*`` backend that the registry builds from its name: ``emu-blocked-L`` for any
    ``L >= 2``, and any ``emu-*`` name with a shape gate (``NAME@min-X=V,...``); None otherwise."""
    base, at, gates = name.partition("@")
    m = re.fullmatch(r"emu-blocked-(\d+)", base)
    inner = known.get(base) or (blocked_backend(int(m.group(1))) if m and int(m.group(1)) >= 2 else None)
    if inner is None or not base.startswith("emu-"):
        return None
    if not at:
        return inner
    return GatedBackend(inner, known["numpy-float32"], gates)
