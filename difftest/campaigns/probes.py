"""Adversarial probes planted in ordinary tensors of a real layer's shape.

Vendors choose kernels by shape, and a fast path's arithmetic shows only where the values make
it show. A probe is a short pattern written into *one channel slice* of otherwise ordinary
tensors (ReLU activations, He-scaled weights, small output gradients), aligned with the fold of
one gradient, with the slice it multiplies set to a constant power of two. The gradient entries
that read the slice then sum the pattern itself (times an exact constant), while every other
entry sums ordinary values, so one large case carries both a realistic workload and a sharp test:

* ``grad_bias[o]`` sums ``δ[:, o]`` in ``(n, i, j)`` order: the pattern fills ``δ[:, o]``;
* ``grad_weight[o, c]`` sums ``δ[n, o, i, j]·x[n, c, …]`` over ``(n, i, j)``: ``δ[:, o]`` is the
  constant and the pattern fills ``x[:, c]`` in ``(n, h, w)`` order;
* ``grad_input[n, c]`` sums ``δ[n, o, …]·w[o, c, di, dj]`` over ``(o, di, dj)``: ``δ[n]`` is the
  constant and the pattern fills ``w[:, c]``.

In a grouped layer (``groups = G``, weight ``(O, C/G, kH, kW)``) every fold stays in one group:
``grad_input[n, c]`` sums over the ``O/G`` output channels of ``c``'s group and the pattern fills
``w[group's o, c mod C/G]`` (a depthwise layer's ``kH·kW`` taps of ``w[c, 0]``); ``grad_weight[o,
c']`` reads input channel ``c = group(o)·C/G + c'``, so the constant ``δ[:, o]`` is set in an
output channel of the probed input channel's group. Dilation and per-axis stride or padding
change which positions a fold reads, not its order: the patterns apply unchanged.

The patterns (:data:`PROBES`), each aimed at a behaviour certified bounds can expose:

* ``single_term`` — one non-zero term with a full significand: any loss of input precision
  (TF32's 11 bits, a narrow accumulator) is an error of ``2^-12`` relative to a sum whose
  order-free bound is ``n·u`` of it;
* ``swamping`` — a large ``B`` then terms just below ``ulp(B)``: round-to-nearest keeps them,
  truncation (round toward zero) and narrow accumulators drop every one, twice the order-free
  bound;
* ``cancellation`` — ``+B, -B`` early among terms below ``ulp(B)/2``: the sequential fold keeps
  the small terms, other orders round them away (beyond the TorchLean bound, within the
  order-free one);
* ``ties`` — significands with few low bits, whose sums land on rounding midpoints;
* ``subnormals`` — subnormal terms whose sums stay subnormal: flushing them to zero (FTZ/DAZ)
  loses everything;
* ``exponent_spread`` — full significands over some forty binades: alignment to the largest
  term and truncation of the rest.

All values are of the case's format exactly; magnitudes stay far below overflow (``B <= 2^6``).
"""

from __future__ import annotations

import math

import numpy as np

from ..values.formats import Format
from ..values.geometry import Geometry

__all__ = ["PROBES", "BACKGROUNDS", "background", "pattern", "plant", "probe_case"]

PROBES = ("none", "single_term", "swamping", "cancellation", "ties", "subnormals", "exponent_spread")

#: Ordinary activation styles: post-ReLU (half zeros), zero-mean normal, image-like in [0, 1).
BACKGROUNDS = ("relu", "normal", "image")

#: Exponent range of the probes' large term ``B = 2^b``.
_B_EXPONENTS = (0, 6)


def _significands(rng: np.random.Generator, fmt: Format, n: int) -> np.ndarray:
    """Full significands ``m`` with ``2^(p-1) <= m < 2^p``."""
    return rng.integers(2 ** (fmt.prec - 1), 2**fmt.prec, n).astype(np.float64)


def background(fmt: Format, g: Geometry, rng: np.random.Generator, style: str = "relu") -> tuple[np.ndarray, ...]:
    """Ordinary ``(input, weight, grad_output)`` of geometry ``g`` in ``fmt``: activations of
    ``style``, He-scaled weights, output gradients of scale ``2^-4``."""
    x = rng.standard_normal(g.input_shape)
    if style == "relu":
        x = np.maximum(x, 0.0)
    elif style == "image":
        x = rng.random(g.input_shape)
    w = rng.standard_normal(g.weight_shape) * math.sqrt(2.0 / (g.Cg * g.kH * g.kW))  # He: the fan-in of a group
    d = rng.standard_normal(g.grad_output_shape) * 2.0**-4
    return tuple(fmt.round_array(a) for a in (x, w, d))


def pattern(kind: str, fmt: Format, length: int, rng: np.random.Generator, pos: int = 0) -> np.ndarray:
    """``length`` values of ``fmt`` in fold order for probe ``kind`` (see the module docstring);
    ``pos`` places the pattern's distinguished term (clipped into range)."""
    p, n = fmt.prec, length
    b = int(rng.integers(max(_B_EXPONENTS[0], fmt.emin + 2 * p + 2), _B_EXPONENTS[1] + 1))
    big = math.ldexp(1.0, b)
    sign = float(rng.choice([-1.0, 1.0]))
    out = np.zeros(n)
    if kind == "single_term":
        out[min(pos, n - 1)] = sign * math.ldexp(float(_significands(rng, fmt, 1)[0]), -p + 1 - int(rng.integers(0, 3)))
    elif kind == "swamping":  # B, then terms in (ulp(B)/2, ulp(B)) of the same sign
        out[:] = sign * np.ldexp(rng.integers(2 ** (p - 1) + 1, 2**p, n).astype(np.float64), b - 2 * p + 1)
        out[min(pos, n - 1)] = sign * big
    elif kind == "cancellation":  # +B, -B early among terms below ulp(B)/2
        out[:] = sign * np.ldexp(rng.integers(2 ** (p - 2), 2**p, n).astype(np.float64), b - 2 * p)
        if n >= 2:
            at = min(pos, n - 2)
            out[at], out[at + 1] = big, -big
    elif kind == "ties":
        mant = np.array([2 ** (p - 1), 2 ** (p - 1) + 1, 2 ** (p - 1) + 2, 2 ** (p - 1) + 3, 2**p - 1, 3 * 2 ** (p - 2) + 1])
        out[:] = rng.choice([-1.0, 1.0], n) * np.ldexp(rng.choice(mant, n).astype(np.float64), rng.integers(-3, 3, n) - p + 1)
    elif kind == "subnormals":
        out[:] = sign * np.ldexp(rng.integers(1, 2 ** (p - 1), n).astype(np.float64), fmt.emin)
    elif kind == "exponent_spread":
        lo = max(fmt.emin + p, -40)
        out[:] = rng.choice([-1.0, 1.0], n) * np.ldexp(_significands(rng, fmt, n), rng.integers(lo, 7, n) - p + 1)
    elif kind != "none":
        raise ValueError(f"unknown probe {kind!r}; probes: {', '.join(PROBES)}")
    return out


def plant(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry, kind: str, target: str, channel: int,
          batch: int, fmt: Format, rng: np.random.Generator, pos: int = 0,
          out_channel: int | None = None) -> tuple[np.ndarray, ...]:
    """Copies of ``(x, w, d)`` with probe ``kind`` aimed at ``target``'s fold in ``channel`` (an
    output channel for ``grad_bias``, an input channel otherwise; taken modulo the count), with
    ``δ[:, out_channel]`` (default: ``channel``) the constant of ``grad_weight`` and ``δ[batch]``
    that of ``grad_input``. In a grouped layer the folds stay in ``channel``'s group: the
    ``grad_weight`` constant is the output channel ``out_channel mod O/G`` of that group, and the
    ``grad_input`` pattern fills that group's output channels of ``w``."""
    x, w, d = x.copy(), w.copy(), d.copy()
    if kind == "none":
        return x, w, d
    if target == "grad_bias":
        o = channel % g.O
        d[:, o] = pattern(kind, fmt, d[:, o].size, rng, pos).reshape(d[:, o].shape)
    elif target == "grad_weight":
        c = channel % g.C
        group = c // g.Cg
        o = group * g.Og + (channel if out_channel is None else out_channel) % g.Og
        d[:, o] = 1.0
        x[:, c] = pattern(kind, fmt, x[:, c].size, rng, pos).reshape(x[:, c].shape)
    elif target == "grad_input":
        c = channel % g.C
        group, local = divmod(c, g.Cg)
        d[batch % g.N] = 1.0
        rows = slice(group * g.Og, (group + 1) * g.Og)
        w[rows, local] = pattern(kind, fmt, w[rows, local].size, rng, pos).reshape(w[rows, local].shape)
    else:
        raise ValueError(f"unknown gradient {target!r}")
    return x, w, d


def probe_case(layer: str, size: int, kind: str, target: str, fmt: Format | None = None, N: int = 1, seed: int = 0):
    """A case of catalogue layer ``layer`` at ``size×size`` (batch ``N``) with probe ``kind`` in
    *every* channel of ``target``'s fold (each channel its own draw of the pattern), on ordinary
    background values: the sharpest single case for one behaviour at a real shape.

    >>> case = probe_case("resnet18.layer1.0.conv1", 16, "single_term", "grad_input")
    >>> case.geometry.C, int((case.weight[:, 0] != 0).sum())
    (64, 1)
    >>> case = probe_case("mobilenet_v2.features.1.depthwise", 8, "single_term", "grad_input")
    >>> case.weight.shape, int((case.weight[5] != 0).sum())  # channel 5's fold: its own 3×3 taps
    ((32, 1, 3, 3), 1)
    """
    from ..values.case import Case
    from .catalogue import get_layer
    from ..values.formats import BINARY32

    fmt = BINARY32 if fmt is None else fmt
    g = get_layer(layer).geometry(N, size)
    rng = np.random.default_rng(seed)
    x, w, d = background(fmt, g, rng)
    channels = g.O if target == "grad_bias" else g.C
    for c in range(channels):
        x, w, d = plant(x, w, d, g, kind, target, c, 0, fmt, rng, out_channel=0)
    return Case(x, w, d, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups, format=fmt)
