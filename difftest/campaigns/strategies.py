"""Hypothesis strategies for Conv2D-backward cases: geometries, values of a format, whole cases.

Small composable functions returning strategies, in the hypothesis style:

>>> from hypothesis import given, settings
>>> from difftest import strategies as dst
>>> @settings(max_examples=3, deadline=None)
... @given(dst.cases(dst.BINARY16, tensor=dst.log_uniform(dst.BINARY16)))
... def test_cases_hold_binary16_values(case):
...     assert dst.BINARY16.representable_array(case.input).all()
>>> test_cases_hold_binary16_values()

Every value strategy yields values of the given format exactly (so a case never needs
``round_inputs``), and the geometry strategies yield only geometries of the spec's comparable
domain (kernel, dilated, within the padded input). Most fuzzed geometries are the spec's own
(one stride and padding, no dilation, no groups); about one in five draws the generalisations
real networks run — groups, dilation, per-axis stride and padding (see :func:`geometries`) —
and shrinking takes them away.

Arguments are checked when a strategy is built, not when it is drawn from: an invalid one
raises :class:`hypothesis.errors.InvalidArgument` naming the argument and what it accepts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from statistics import NormalDist

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from ..values.case import MAX_MAGNITUDE, Case
from ..errors import UnknownFormat
from ..values.formats import BFLOAT16, BINARY16, BINARY32, BINARY64, PRESETS, TF32, Format, get_format
from ..values.geometry import GRADIENTS, Geometry
from ..values.profiles import Limits
from ..values.supports import ALL, SPEC, Supports

__all__ = [
    "BINARY64", "BINARY32", "TF32", "BINARY16", "BFLOAT16", "Limits",
    "geometries", "format_values", "normal", "uniform", "log_uniform", "integers", "powers_of_two",
    "subnormals", "near_ties", "values", "arrays", "seeded", "seeded_array", "cancellation", "constant_blocks",
    "tensors", "structured",
    "cases", "realistic_geometries", "layer_classes", "realistic_cases", "requested_gradients", "campaign_cases",
]


# --- argument checks (at build time) --------------------------------------------------------

def _require(ok: bool, name: str, rule: str, value) -> None:
    if not ok:
        raise InvalidArgument(f"{name} must be {rule}, got {value!r}")


def _is_integer(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_finite(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x, name: str, least: int | None = None) -> int:
    rule = "an integer" if least is None else f"an integer >= {least}"
    _require(_is_integer(x) and (least is None or x >= least), name, rule, x)
    return int(x)


def _format(fmt: Format | str) -> Format:
    """``fmt`` as a Format: a preset name or a binary FLT format whose values float64 holds exactly."""
    try:
        fmt = get_format(fmt)
    except UnknownFormat:
        raise InvalidArgument(f"fmt must be a Format or one of {', '.join(PRESETS)}, got {fmt!r}") from None
    exact = fmt.radix == 2 and fmt.emin is not None and fmt.prec <= 53 and fmt.emin >= BINARY64.emin
    _require(exact, "fmt", "a binary FLT format held exactly in float64 (prec <= 53, emin >= -1074)", fmt)
    return fmt


def _limits(limits: Limits) -> Limits:
    _require(isinstance(limits, Limits), "limits", "a Limits", limits)
    return limits


def _shape(shape: tuple[int, ...], rank: int | None = None) -> tuple[int, ...]:
    rule = "a tuple of positive integers" if rank is None else f"a tuple of {rank} positive integers"
    ok = isinstance(shape, (tuple, list)) and all(_is_integer(n) and n >= 1 for n in shape)
    _require(ok and (rank is None or len(shape) == rank), "shape", rule, shape)
    return tuple(int(n) for n in shape)


def _strategy(x, name: str, rule: str) -> st.SearchStrategy:
    _require(isinstance(x, st.SearchStrategy), name, rule, x)
    return x


# --- geometries ---------------------------------------------------------------------------

def _extensions(extensions) -> Supports:
    """``extensions`` as a :class:`~difftest.supports.Supports`: True (all), False (the spec's own
    geometry) or a Supports (what a backend takes)."""
    if isinstance(extensions, Supports):
        return extensions
    _require(isinstance(extensions, bool), "extensions", "True, False or a difftest.supports.Supports", extensions)
    return ALL if extensions else SPEC


def geometries(limits: Limits = Limits(), extensions=True) -> st.SearchStrategy[Geometry]:
    """Valid geometries within ``limits``: non-square images and kernels, any stride and padding,
    and in one draw in three (hashed, see :func:`_spread_index`) the generalisations of real
    networks, each with probability 1/2 where ``limits`` allow it:

    * ``groups`` from 2 to ``max_channels``, both channel counts multiples of it (depthwise
      when each group has one channel);
    * ``dilation`` from 2 to ``max_dilation`` on the axes whose kernel is wider than 1, the same
      on both axes or, one time in two, the width's drawn on its own (1 to ``max_dilation``);
    * a per-axis stride ``(sh, sw)`` and a per-axis padding ``(ph, pw)``, the axes unequal.

    Nominally about 30 % of the geometries leave the spec's (one in six each grouped, dilated, with
    unequal strides, with unequal paddings); hypothesis's generation, which favours simple
    choices, makes it about one in five in practice (quick profile's limits, 1,500 draws of
    :func:`cases`: 18-24 % non-plain, each generalisation in 7-12 %), so most cases still test
    the spec's own geometry. Shrinking goes to it: no groups, no dilation, equal axes.

    ``extensions``: False draws the spec's own geometry only; a :class:`~difftest.supports.Supports`
    draws what a backend takes (only the generalisations it allows, and a batch of one where it
    takes no batch)."""
    return _geometries(_limits(limits), _extensions(extensions))


def _share(k: int, n: int) -> st.SearchStrategy[bool]:
    """True ``k`` times in ``n`` (hashed: see :func:`_spread_index`), shrinking to False."""
    return _spread_index(n).map(lambda i: i >= n - k)


@st.composite
def _geometries(draw, limits: Limits, takes: Supports = ALL) -> Geometry:
    general = draw(_share(1, 3)) if (takes.groups or takes.dilation or takes.per_axis) else False
    kH = draw(st.integers(1, limits.max_kernel))
    kW = draw(st.integers(1, limits.max_kernel))
    ph = pw = draw(st.integers(0, limits.max_padding))
    sh = sw = draw(st.integers(1, limits.max_stride))
    dh = dw = groups = 1
    if general:
        if takes.groups and limits.max_channels > 1 and draw(_share(1, 2)):
            groups = draw(st.integers(2, limits.max_channels))
        if takes.dilation and limits.max_dilation > 1 and max(kH, kW) > 1 and draw(_share(1, 2)):
            d = draw(st.integers(2, limits.max_dilation))
            dh = d if kH > 1 else 1
            apart = takes.per_axis and draw(_share(1, 2))
            dw = (draw(st.integers(1, limits.max_dilation)) if apart else d) if kW > 1 else 1
            if not takes.per_axis and dh != dw:  # one axis without taps: dilate it alike (no effect)
                dh = dw = d
        if takes.per_axis and limits.max_stride > 1 and draw(_share(1, 2)):  # unequal axes: shrinks to the next stride
            sw = 1 + (sh - 1 + draw(st.integers(1, limits.max_stride - 1))) % limits.max_stride
        if takes.per_axis and limits.max_padding > 0 and draw(_share(1, 2)):
            pw = (ph + draw(st.integers(1, limits.max_padding))) % (limits.max_padding + 1)
    eh, ew = dh * (kH - 1) + 1, dw * (kW - 1) + 1  # the dilated kernel's reach
    H = draw(st.integers(max(1, eh - 2 * ph), max(limits.max_size, eh)))
    W = draw(st.integers(max(1, ew - 2 * pw), max(limits.max_size, ew)))
    N = draw(st.integers(1, limits.max_batch)) if takes.batch else 1
    per_group = limits.max_channels // groups
    C = groups * draw(st.integers(1, per_group))
    O = groups * draw(st.integers(1, per_group))
    return Geometry(N=N, C=C, H=H, W=W, O=O, kH=kH, kW=kW, stride=(sh, sw), padding=(ph, pw),
                    dilation=(dh, dw), groups=groups)


# --- values of a format ------------------------------------------------------------------

def _safe_max_exp(fmt: Format, limits: Limits) -> int:
    """Largest exponent ``e`` with ``|x|, |y| < 2^e`` keeping every sum of ``max_terms``
    products below the format's overflow threshold (no ``domain`` noise in campaigns)."""
    emax = fmt.emax if fmt.emax is not None else 127
    top = (emax - math.ceil(math.log2(limits.max_terms)) - 2) // 2
    return max(1, min(top, int(math.log2(MAX_MAGNITUDE))))


def format_values(fmt: Format | str, min_exp: int | None = None, max_exp: int = 4) -> st.SearchStrategy[float]:
    """``±m·2^q`` with ``m < 2^p`` and ``min_exp <= q``, ``q + p <= max_exp``: values below 2^max_exp."""
    fmt, max_exp = _format(fmt), _integer(max_exp, "max_exp")
    min_exp = None if min_exp is None else _integer(min_exp, "min_exp")
    lo = fmt.emin if min_exp is None else max(min_exp, fmt.emin)
    hi = max(lo, max_exp - fmt.prec)
    return st.builds(
        lambda sign, m, q: math.ldexp(sign * m, q),
        st.sampled_from([1, -1]), st.integers(0, 2**fmt.prec - 1), st.integers(lo, hi),
    )


def _rounded(fmt: Format, xs: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return xs.map(lambda x: float(fmt.round_array(np.float64(x))))


def normal(fmt: Format | str, scale: float = 1.0) -> st.SearchStrategy[float]:
    """Normally distributed values (inverse CDF of a uniform draw, shrinking to 0), rounded into ``fmt``."""
    _require(_is_finite(scale) and scale > 0, "scale", "a finite number > 0", scale)
    dist = NormalDist(0.0, scale)
    u = st.floats(-1.0, 1.0, exclude_min=True, exclude_max=True)
    return _rounded(_format(fmt), u.map(lambda t: dist.inv_cdf(min(max(0.5 + 0.5 * t, 1e-12), 1 - 1e-12))))


def uniform(fmt: Format | str, lo: float = -1.0, hi: float = 1.0) -> st.SearchStrategy[float]:
    """Uniform values in ``[lo, hi]`` rounded into ``fmt``."""
    _require(_is_finite(lo), "lo", "a finite number", lo)
    _require(_is_finite(hi) and hi >= lo, "hi", f"a finite number >= lo ({lo!r})", hi)
    return _rounded(_format(fmt), st.floats(lo, hi))


def log_uniform(fmt: Format | str, max_exp: int | None = None, limits: Limits = Limits()) -> st.SearchStrategy[float]:
    """Values whose exponent is uniform over the format's range, subnormals to ``2^max_exp``."""
    fmt = _format(fmt)
    top = _safe_max_exp(fmt, _limits(limits)) if max_exp is None else _integer(max_exp, "max_exp")
    return format_values(fmt, fmt.emin, top)


def integers(fmt: Format | str, bound: int = 16) -> st.SearchStrategy[float]:
    """Small integers (exact sums and products until they grow past ``2^p``)."""
    bound = min(_integer(bound, "bound", 0), 2 ** _format(fmt).prec)
    return st.integers(-bound, bound).map(float)


def powers_of_two(fmt: Format | str, max_exp: int = 4) -> st.SearchStrategy[float]:
    """``±2^k`` from the smallest subnormal up to ``2^max_exp``."""
    fmt = _format(fmt)
    max_exp = _integer(max_exp, "max_exp", fmt.emin)
    return st.builds(lambda s, k: math.ldexp(s, k), st.sampled_from([1.0, -1.0]), st.integers(fmt.emin, max_exp))


def subnormals(fmt: Format | str) -> st.SearchStrategy[float]:
    """Subnormal values of the format (``m·2^emin``, ``m < 2^(p-1)``) and the smallest normals."""
    fmt = _format(fmt)
    return st.builds(lambda s, m: math.ldexp(s * m, fmt.emin), st.sampled_from([1, -1]), st.integers(0, 2**fmt.prec - 1))


def near_ties(fmt: Format | str) -> st.SearchStrategy[float]:
    """Values ``(2^(p-1) + m)·2^q`` with few low bits, whose sums and products land on or next
    to rounding midpoints (``1 + 2^-(p-1)`` squared, ``1 + 3·2^-p`` sums, ...)."""
    p = _format(fmt).prec
    mant = st.sampled_from([2 ** (p - 1), 2 ** (p - 1) + 1, 2 ** (p - 1) + 2, 2 ** (p - 1) + 3, 2**p - 1, 3 * 2 ** (p - 2) + 1])
    return st.builds(lambda s, m, q: math.ldexp(s * m, q - p + 1), st.sampled_from([1, -1]), mant, st.integers(-3, 2))


def _clipped(fmt: Format, limits: Limits, xs: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """Keep magnitudes below ``2^top`` (no overflow of any sum in the IEEE counterpart)."""
    m = math.ldexp(1.0, _safe_max_exp(fmt, limits)) * (1 - 2.0 ** -fmt.prec)
    return xs.map(lambda x: min(max(x, -m), m))


def values(fmt: Format | str, limits: Limits = Limits()) -> st.SearchStrategy[float]:
    """A mix of every value family above, within the overflow-free range of ``limits``."""
    fmt, limits = _format(fmt), _limits(limits)
    top = _safe_max_exp(fmt, limits)
    return _clipped(fmt, limits, st.one_of(
        normal(fmt), uniform(fmt), log_uniform(fmt, limits=limits), integers(fmt, min(16, 2 ** max(top - 1, 0))),
        powers_of_two(fmt, min(top - 1, 4)), subnormals(fmt), near_ties(fmt),
    ))


# --- arrays -------------------------------------------------------------------------------

def arrays(shape: tuple[int, ...], elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of the given shape with elements from ``elements``."""
    elements = _strategy(elements, "elements", "a hypothesis strategy of floats")
    return hnp.arrays(np.float64, _shape(shape), elements=elements)


def cancellation(fmt: Format | str, shape: tuple[int, ...], limits: Limits = Limits()) -> st.SearchStrategy[np.ndarray]:
    """Structured cancellation along the spec's fold order (axis 1 is the summed-over channel
    for the input gradient; axes 0, 2, 3 are the ``(n, i, j)`` fold of the other two):
    ``+B, -B`` next to each other, early, among many small terms just below ``ulp(B)/2``.

    A sequential fold cancels the pair at once and keeps every small term; a blocked, pairwise
    or vectorised order adds ``B`` to partial sums of small terms and rounds them away, which
    is beyond the TorchLean bound (certified for the sequential order) and within the
    order-free bound.
    """
    return _cancellation(_format(fmt), _shape(shape, rank=4), _limits(limits))


@st.composite
def _cancellation(draw, fmt: Format, shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    top = _safe_max_exp(fmt, limits)
    b = draw(st.integers(max(fmt.emin + 2 * fmt.prec + 2, top - 8), top - 1))  # B = 2^b
    lo_m, hi_m = 2 ** (fmt.prec - 2), 2**fmt.prec - 1
    if int(np.prod(shape)) > ELEMENTWISE_MAX:
        m = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(lo_m, hi_m + 1, shape).astype(np.float64)
    else:
        m = draw(arrays(shape, st.integers(lo_m, hi_m).map(float)))
    a = np.ldexp(m, b - 2 * fmt.prec) * draw(st.sampled_from([1.0, -1.0]))
    flat = a.transpose(1, 0, 2, 3).reshape(shape[1], -1)  # (channel, fold order), a copy
    k = flat.shape[1]
    if k >= 2:
        pos = draw(st.integers(0, min(k - 2, 7)))
        flat[:, pos], flat[:, pos + 1] = math.ldexp(1.0, b), -math.ldexp(1.0, b)
    return flat.reshape(shape[1], shape[0], *shape[2:]).transpose(1, 0, 2, 3).copy()


def constant_blocks(fmt: Format | str, shape: tuple[int, ...], limits: Limits = Limits()) -> st.SearchStrategy[np.ndarray]:
    """Blocks of one repeated value: long sums of equal terms round systematically, and
    differently in sequential and blocked orders."""
    return _constant_blocks(_format(fmt), _shape(shape), _limits(limits))


@st.composite
def _constant_blocks(draw, fmt: Format, shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    v = draw(_clipped(fmt, limits, st.one_of(near_ties(fmt), log_uniform(fmt, limits=limits))))
    a = np.full(shape, v)
    if a.size > 1 and draw(st.booleans()):
        cut = draw(st.integers(1, a.size - 1))
        a.reshape(-1)[cut:] = draw(_clipped(fmt, limits, st.one_of(near_ties(fmt), integers(fmt))))
    return a


#: Arrays with more elements than this are drawn from a seed (numpy) instead of element by element.
ELEMENTWISE_MAX = 64

FAMILIES = ("mixed", "normal", "uniform", "log_uniform", "integers", "powers_of_two", "subnormals", "near_ties")


def seeded_array(fmt: Format | str, shape: tuple[int, ...], family: str, seed: int, sparsity: float = 0.0,
                 limits: Limits = Limits()) -> np.ndarray:
    """An array of one value family, generated by numpy from ``seed`` and rounded into ``fmt``
    (the families of the element strategies above, for arrays too large to draw element-wise)."""
    fmt, shape, limits = _format(fmt), _shape(shape), _limits(limits)
    _require(family in FAMILIES, "family", f"one of {', '.join(FAMILIES)}", family)
    _require(_is_finite(sparsity) and 0 <= sparsity < 1, "sparsity", "a number in [0, 1)", sparsity)
    rng = np.random.default_rng(_integer(seed, "seed", 0))
    n = int(np.prod(shape))
    top = _safe_max_exp(fmt, limits)
    p = fmt.prec
    sign = rng.choice([-1.0, 1.0], n)

    def make(kind: str) -> np.ndarray:
        if kind == "normal":
            return rng.standard_normal(n)
        if kind == "uniform":
            return rng.uniform(-1.0, 1.0, n)
        if kind == "log_uniform":
            return sign * np.ldexp(rng.integers(0, 2**p, n).astype(np.float64), rng.integers(fmt.emin, max(fmt.emin, top - p) + 1, n))
        if kind == "integers":
            b = min(16, 2 ** max(top - 1, 0))
            return rng.integers(-b, b + 1, n).astype(np.float64)
        if kind == "powers_of_two":
            return sign * np.ldexp(1.0, rng.integers(fmt.emin, min(top - 1, 4) + 1, n))
        if kind == "subnormals":
            return sign * np.ldexp(rng.integers(0, 2**p, n).astype(np.float64), fmt.emin)
        if kind == "near_ties":
            m = np.array([2 ** (p - 1), 2 ** (p - 1) + 1, 2 ** (p - 1) + 2, 2 ** (p - 1) + 3, 2**p - 1, 3 * 2 ** (p - 2) + 1], dtype=np.float64)
            return sign * np.ldexp(rng.choice(m, n), rng.integers(-3, 3, n) - p + 1)
        parts = np.stack([make(k) for k in FAMILIES[1:]])  # mixed: each element from a random family
        return parts[rng.integers(0, len(FAMILIES) - 1, n), np.arange(n)]

    a = make(family)
    if sparsity > 0:
        a[rng.random(n) < sparsity] = 0.0
    m = math.ldexp(1.0, top) * (1 - 2.0 ** -p)
    return fmt.round_array(np.clip(a, -m, m)).reshape(shape)


def seeded(fmt: Format | str, shape: tuple[int, ...], limits: Limits = Limits()) -> st.SearchStrategy[np.ndarray]:
    """A seeded array: hypothesis draws (and shrinks) the family, the seed and the sparsity."""
    return _seeded(_format(fmt), _shape(shape), _limits(limits))


@st.composite
def _seeded(draw, fmt: Format, shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    family = draw(st.sampled_from(FAMILIES))
    sparsity = draw(st.sampled_from([0.0, 0.0, 0.5, 0.9]))
    return seeded_array(fmt, shape, family, draw(st.integers(0, 2**32 - 1)), sparsity, limits)


def tensors(fmt: Format | str, shape: tuple[int, ...], limits: Limits = Limits()) -> st.SearchStrategy[np.ndarray]:
    """An input, weight or grad_output tensor: mixed elements, or a structured pattern.

    Tensors of more than ``ELEMENTWISE_MAX`` entries are seeded arrays (fast to draw, shrinking
    by family and seed); smaller ones are drawn element by element (shrinking entry by entry).
    """
    fmt, shape, limits = _format(fmt), _shape(shape, rank=4), _limits(limits)
    if int(np.prod(shape)) > ELEMENTWISE_MAX:
        plain = seeded(fmt, shape, limits)
    else:
        plain = st.one_of(
            arrays(shape, values(fmt, limits)),
            arrays(shape, _clipped(fmt, limits, st.one_of(normal(fmt), uniform(fmt)))),
        )
    return st.one_of(plain, cancellation(fmt, shape, limits), constant_blocks(fmt, shape, limits))


def _ones_like(fmt: Format, shape) -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from([1.0, 2.0, 0.5]).map(lambda v: np.full(shape, v))


def structured(fmt: Format | str, g: Geometry, limits: Limits = Limits()) -> st.SearchStrategy[tuple[np.ndarray, ...]]:
    """``(input, weight, grad_output)`` aimed at one gradient's fold: a cancellation pattern in
    one tensor and constants in the others, so each entry's sum is the pattern itself."""
    _require(isinstance(g, Geometry), "g", "a Geometry", g)
    return _structured(_format(fmt), g, _limits(limits))


@st.composite
def _structured(draw, fmt: Format, g: Geometry, limits: Limits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    which = draw(st.sampled_from(["grad_bias", "grad_weight", "grad_input"]))
    x, w, d = (draw(_ones_like(fmt, shape)) for shape in (g.input_shape, g.weight_shape, g.grad_output_shape))
    if which == "grad_weight":
        x = draw(cancellation(fmt, g.input_shape, limits))
    elif which == "grad_input":
        # the input gradient folds over the output channel first (its group's): cancel along O
        w = draw(cancellation(fmt, (g.Cg, g.O, g.kH, g.kW), limits)).transpose(1, 0, 2, 3).copy()
    else:
        d = draw(cancellation(fmt, g.grad_output_shape, limits))
    return x, w, d


def cases(fmt: Format | str = BINARY32, geometry=None, tensor=None, limits: Limits = Limits(),
          extensions=True) -> st.SearchStrategy[Case]:
    """Whole cases of ``fmt``: a geometry and three tensors of representable values.

    ``geometry`` is a strategy of :class:`Geometry` (default :func:`geometries` with
    ``extensions``: False for the spec's own geometry, or the :class:`~difftest.supports.Supports`
    of a backend, ``backend.supports``); ``tensor`` a function ``(fmt, shape) -> strategy``
    (default :func:`tensors`) or a value strategy.
    """
    fmt, limits = _format(fmt), _limits(limits)
    if geometry is None:
        geometry = geometries(limits, extensions)
    else:
        geometry = _strategy(geometry, "geometry", "a strategy of Geometry")
    ok = tensor is None or isinstance(tensor, st.SearchStrategy) or callable(tensor)
    _require(ok, "tensor", "a value strategy or a function (fmt, shape) -> strategy of arrays", tensor)
    return _cases(fmt, geometry, tensor, limits)


@st.composite
def _cases(draw, fmt: Format, geometry: st.SearchStrategy[Geometry], tensor, limits: Limits) -> Case:
    g = draw(geometry)
    if tensor is None:
        if draw(st.integers(0, 3)) == 0:
            x, w, d = draw(structured(fmt, g, limits))
            return _case(x, w, d, g, fmt)
        make = lambda shape: tensors(fmt, shape, limits)  # noqa: E731
    elif isinstance(tensor, st.SearchStrategy):
        make = lambda shape: arrays(shape, tensor)  # noqa: E731
    else:
        make = lambda shape: tensor(fmt, shape)  # noqa: E731
    return _case(draw(make(g.input_shape)), draw(make(g.weight_shape)), draw(make(g.grad_output_shape)), g, fmt)


def _case(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry, fmt: Format) -> Case:
    """The case of arrays ``x, w, d`` with ``g``'s stride, padding, dilation and groups."""
    return Case(x, w, d, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups, format=fmt)


# --- real layers with probes -------------------------------------------------------------------

def realistic_geometries(max_macs: int, max_batch: int = 2, layers=None, extensions=True) -> st.SearchStrategy[Geometry]:
    """Geometries of real layers (:mod:`difftest.catalogue`): a layer's channels, kernel, stride,
    padding, dilation and groups, a batch up to ``max_batch`` and an input size up to the largest
    (its own at most) at which one gradient costs at most ``max_macs`` multiply-adds; shrinking
    makes the input smaller. Layers too costly even at their smallest size are left out.
    ``layers``: names (default: all); ``extensions`` as in :func:`geometries` (False: the layers of
    the spec's own geometry only; a backend's ``supports``: the layers it takes).

    The draw is stratified by what libraries switch kernels on: the depthwise, the grouped, the
    dilated and the asymmetric layers (:attr:`~difftest.catalogue.CatalogueLayer.family`) are a
    class each, the dense ones a class per kernel size, stride and channel count (fewer than 32,
    32 to 127, 128 or more in the smaller of C and O); each class is as likely as any other, then
    a layer within it (the many 3×3 stride-1 layers do not crowd out 7×7, 11×11, strided, wide,
    depthwise or dilated ones)."""
    from .catalogue import LAYERS, largest_size, smallest_size

    max_macs, max_batch = _integer(max_macs, "max_macs", 1), _integer(max_batch, "max_batch", 1)
    names = list(LAYERS) if layers is None else list(layers)
    for name in names:
        _require(name in LAYERS, "layers", "names of catalogue layers (difftest.catalogue.LAYERS)", name)
    takes = _extensions(extensions)
    if not takes.batch:
        max_batch = 1
    usable = [LAYERS[n] for n in names if largest_size(LAYERS[n], 1, max_macs) is not None
              and takes.takes(LAYERS[n].geometry(1, smallest_size(LAYERS[n])))]
    _require(bool(usable), "max_macs", "large enough for one catalogue layer (that the extensions allow) at its "
             "smallest size", max_macs)
    return _realistic_geometries(list(layer_classes(usable).values()), max_macs, max_batch)


def layer_classes(layers) -> dict[tuple, list]:
    """The strata of :func:`realistic_geometries`: ``(family,)`` for the depthwise, grouped, dilated
    and asymmetric layers, ``("dense", kernel, stride, width class)`` for the others, in the order
    of first appearance, each with its layers."""
    classes: dict[tuple, list] = {}
    for layer in layers:
        if layer.family != "dense":
            key = (layer.family,)
        else:
            width = min(layer.C, layer.O)
            key = ("dense", layer.k, layer.stride, (width >= 32) + (width >= 128))
        classes.setdefault(key, []).append(layer)
    return classes


def _spread_index(n: int) -> st.SearchStrategy[int]:
    """An index below ``n`` that shrinks to 0 but is drawn near-uniformly: hypothesis favours the
    first entries of ``sampled_from`` and small integers while generating (a campaign drew one
    real layer in fourteen where the profile asks for three in ten, mostly the first classes at
    their smallest sizes), so the drawn integer is hashed; 0, where shrinking goes, stays 0."""
    return st.integers(0, 2**32 - 1).map(lambda u: 0 if u == 0 else _mix(u) % n)


def _mix(u: int) -> int:
    """A fixed, well-spread hash of ``u`` (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(u.to_bytes(8, "little")).digest()[:8], "little")


@st.composite
def _realistic_geometries(draw, classes: list, max_macs: int, max_batch: int) -> Geometry:
    from .catalogue import largest_size, smallest_size

    members = classes[draw(_spread_index(len(classes)))]
    layer = members[draw(_spread_index(len(members)))]
    N = draw(st.integers(1, max_batch))
    top = largest_size(layer, N, max_macs)
    if top is None:
        N, top = 1, largest_size(layer, 1, max_macs)
    # Half the draws take the largest affordable size (where vendors' fast paths run), half any
    # size; shrinking goes to the smallest.
    low = smallest_size(layer)
    size = top if draw(_spread_index(2)) else low + draw(_spread_index(top - low + 1))
    return layer.geometry(N, size)


def realistic_cases(fmt: Format | str = BINARY32, max_macs: int = 2_000_000, max_batch: int = 2,
                    layers=None, extensions=True) -> st.SearchStrategy[Case]:
    """Cases of a real layer's geometry (:func:`realistic_geometries`): ordinary values with
    adversarial probes (:mod:`difftest.probes`) in the folds of one to three gradients, every probe
    kind in a channel slice of its own (as many as there are channels), so one case tries every
    behaviour on every probed gradient.
    Large tensors cost a seed, not an element each: hypothesis draws the layer, size, background,
    the kinds' order, the probed gradients and, per gradient, the first channel, batch entry and position;
    numpy fills the arrays. One case in ten has ordinary values only. ``extensions`` as in
    :func:`realistic_geometries`."""
    return _realistic_cases(_format(fmt), realistic_geometries(max_macs, max_batch, layers, extensions))


@st.composite
def _realistic_cases(draw, fmt: Format, geometry: st.SearchStrategy[Geometry]) -> Case:
    from .probes import BACKGROUNDS, PROBES, background, plant

    g = draw(geometry)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, w, d = background(fmt, g, rng, draw(st.sampled_from(BACKGROUNDS)))
    if draw(st.integers(0, 9)) < 9:
        # every kind, in a random order, as far as the channels go (a 3-channel layer gets three);
        # any non-empty set of probed folds (shrinking keeps the fewest it can)
        kinds = draw(st.permutations(PROBES[1:]))
        targets = [t for t in GRADIENTS if draw(st.booleans())] or [GRADIENTS[-1]]
        # grad_input's probe makes δ[n] constant, grad_weight's δ[:, first], and grad_bias's writes
        # patterns into δ: planted in GRADIENTS order, the bias patterns disturb the others' constant
        # δ in the (at most six) channels they take, and nothing else
        for target in targets:
            first, batch, pos = draw(st.integers(0, 2**16)), draw(st.integers(0, g.N - 1)), draw(st.integers(0, 7))
            width = g.O if target == "grad_bias" else g.C
            for i, kind in enumerate(kinds[:width]):
                x, w, d = plant(x, w, d, g, kind, target, first + i, batch, fmt, rng, pos, out_channel=first)
    return _case(x, w, d, g, fmt)


#: The proper non-empty subsets of the gradients, for :func:`requested_gradients`.
SUBSETS = tuple(tuple(g for i, g in enumerate(GRADIENTS) if mask >> i & 1) for mask in range(1, 2 ** len(GRADIENTS) - 1))


def requested_gradients() -> st.SearchStrategy[tuple[str, ...]]:
    """Which gradients a case requests: all three in seven draws of eight (what most training
    does, and where shrinking goes), else one of the six proper subsets — frameworks run other
    kernels for them (MXNet's bias gradient was wrong unless the weight gradient was requested).
    One in four cost the search half its early findings (numpy's bias order in 40 draws: 4 seeds
    of 10 against 8 without subsets; one in eight: 7)."""
    return st.integers(0, 7).flatmap(lambda r: st.just(GRADIENTS) if r < 7 else st.sampled_from(SUBSETS))


def campaign_cases(fmt: Format | str, limits: Limits = Limits(), realistic: float = 0.0,
                   max_macs: int = 2_000_000, subsets: bool = True, extensions=True,
                   max_batch: int = 2) -> st.SearchStrategy[Case]:
    """What a campaign draws: small fuzzed :func:`cases` within ``limits``, and a share
    ``realistic`` (0 to 1, of the draws; in steps of 1/1000) of :func:`realistic_cases` up to
    ``max_macs`` and batches up to ``max_batch``; with ``subsets``, each requesting the gradients of :func:`requested_gradients`;
    ``extensions`` as in :func:`cases`. Shrinking moves a failure towards the small cases where
    it still fails, and towards all three gradients."""
    fmt, limits = _format(fmt), _limits(limits)
    _require(_is_finite(realistic) and 0 <= realistic <= 1, "realistic", "a number in [0, 1]", realistic)
    small = cases(fmt, limits=limits, extensions=extensions)
    cut = round(1000 * (1 - realistic))
    if cut == 1000:
        drawn = small
    elif cut == 0:
        drawn = realistic_cases(fmt, max_macs, max_batch, extensions=extensions)
    else:
        real = realistic_cases(fmt, max_macs, max_batch, extensions=extensions)
        drawn = _spread_index(1000).flatmap(lambda r: small if r < cut else real)
    if not subsets:
        return drawn
    return st.tuples(drawn, requested_gradients()).map(
        lambda cg: cg[0] if cg[1] == GRADIENTS else dataclasses.replace(cg[0], gradients=cg[1]))
