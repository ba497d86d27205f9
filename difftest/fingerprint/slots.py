"""The probe slots of a fingerprint: independent folds in one case (which entries, which positions
of the pattern tensor feed each), building a case from slot rows and reading them back, running a
backend on it; the constants every part shares."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..values.case import Case
from ..errors import BackendCrashed, BackendTimedOut
from ..values.formats import Format
from ..values.geometry import Geometry
from ..maths.layouts import grad_output_rows, im2col, im2col_transposed, weight_rows
from ..campaigns.probes import background


#: The properties, in the order of the JSON fields (``block`` goes with ``order``).
PROPERTIES = ("product_bits", "accumulator_bits", "rounding", "fma", "subnormal_inputs", "subnormal_outputs",
              "order", "deterministic", "error_scaling")
FIELDS = ("product_bits", "accumulator_bits", "rounding", "fma", "subnormal_inputs", "subnormal_outputs", "order",
          "block", "deterministic", "error_scaling")

#: Which tensor carries the probe patterns of each gradient's slots.
_PATTERN_TENSOR = {"grad_weight": "input", "grad_input": "weight", "grad_bias": "grad_output"}

#: Runs of the ordinary case for ``deterministic``.
RUNS = 3
#: Most order-probe pairs per gradient (fewer where there are fewer slots).
ORDER_PAIRS = 24
#: Seed of the ordinary background values.
SEED = 0
#: Fresh random cases, of at most ``VERIFY_SLOTS`` probed entries each, that must reproduce a
#: claimed order bit for bit (:func:`verify_order`). Two adjacent terms swapped in a sequential
#: binary32 fold of 64 normal values change about one result in twelve: 128 entries miss that
#: with probability 0.92^128 < 10^-4.
VERIFY_CASES = 8
VERIFY_SLOTS = 16


# --- geometry ------------------------------------------------------------------------------

def default_geometry() -> Geometry:
    """ResNet-18's first 64 → 64 3×3 layer at 16×16: a mid-size shape where vendors' fast paths run."""
    from ..campaigns.catalogue import LAYERS

    return LAYERS["resnet18.layer1.0.conv1"].geometry(1, 16)


def layer_geometry(name: str, max_macs: int = 20_000_000) -> Geometry:
    """A catalogue layer at the largest input size whose gradient costs at most ``max_macs``."""
    from ..campaigns.catalogue import get_layer, largest_size, smallest_size

    layer = get_layer(name)
    return plain_only(layer.geometry(1, largest_size(layer, 1, max_macs) or smallest_size(layer)), f"--layer {name}")


def plain_only(g: Geometry, what: str) -> Geometry:
    """``g`` if the probes can be laid out in it: one group, no dilation, square stride and
    padding (the fold slots of this module are built for TorchLean's own geometry); else a
    :class:`DifftestError` saying so."""
    from ..errors import DifftestError

    if not g.plain:
        raise DifftestError(f"{what}: the fingerprint probes lay out folds of ungrouped, undilated convolutions "
                            f"with one stride and padding; this one has {g.text()}; fingerprint a dense layer "
                            "(or --geometry), and judge this one with difftest check or run")
    return g


def parse_geometry(text: str) -> Geometry:
    """``"N,C,H,W,O,k,stride,padding"`` as a :class:`Geometry` (:class:`DifftestError` if not).

    >>> parse_geometry("1,64,16,16,64,3,1,1").weight_shape
    (64, 64, 3, 3)
    """
    from ..errors import DifftestError

    parts = [p.strip() for p in str(text).split(",")]
    try:
        n, c, h, w, o, k, s, p = (int(v) for v in parts)
    except ValueError:
        raise DifftestError(f"--geometry {text}: give eight integers N,C,H,W,O,k,stride,padding "
                            "(e.g. 1,64,16,16,64,3,1,1)") from None
    try:
        return Geometry(N=n, C=c, H=h, W=w, O=o, kH=k, kW=k, stride=s, padding=p)
    except DifftestError as exc:
        raise DifftestError(f"--geometry {text}: {exc}") from None


# --- slots: independent folds in one case ----------------------------------------------------

def _labels(shape) -> np.ndarray:
    """1, 2, … in the shape of a tensor: passed through a layout, 0 marks a structural zero."""
    return np.arange(1, math.prod(shape) + 1, dtype=np.float64).reshape(shape)


@dataclass(frozen=True, eq=False)
class Slots:
    """One gradient's probe slots in a geometry: slot ``s`` is the entry ``entries[s]`` (a flat
    index of the gradient) whose fold position ``k`` reads ``A`` times the pattern tensor's
    element ``pattern[s, k]`` (a flat index; −1: structurally zero). ``constant`` lists the δ
    elements that hold ``A`` (none for ``grad_bias``); ``usable`` the fold positions that read the
    pattern (the same for every slot)."""

    gradient: str
    geometry: Geometry
    pattern: np.ndarray
    constant: np.ndarray
    entries: np.ndarray
    usable: np.ndarray

    @property
    def K(self) -> int:
        """The fold length: the inner dimension of the gradient's GEMM."""
        return self.pattern.shape[1]

    @property
    def count(self) -> int:
        return self.pattern.shape[0]

    @property
    def tensor(self) -> str:
        return _PATTERN_TENSOR[self.gradient]

    def row(self, terms: dict[int, float]) -> np.ndarray:
        """A fold pattern of length ``K``: ``terms`` maps the index of a *usable* position to its value."""
        out = np.zeros(self.K)
        for u, v in terms.items():
            out[self.usable[u]] = v
        return out


def _central(candidates: np.ndarray, coords: np.ndarray, centre) -> int:
    """The candidate nearest ``centre`` (first on ties)."""
    dist = ((coords - np.asarray(centre, dtype=float)) ** 2).sum(axis=1)
    return int(candidates[np.argmin(dist[candidates])])


def slots_of(gradient: str, g: Geometry) -> Slots:
    """The slots of ``gradient`` in geometry ``g`` (see the module docstring)."""
    if gradient == "grad_bias":
        rows = grad_output_rows(_labels(g.grad_output_shape), g).astype(np.int64) - 1
        return Slots(gradient, g, rows, np.empty(0, np.int64), np.arange(g.O), np.arange(rows.shape[1]))
    if gradient == "grad_weight":
        cols = im2col(_labels(g.input_shape), g).astype(np.int64) - 1  # (K, C·kH·kW), -1 = padding
        taps = g.kH * g.kW
        reads = (cols[:, :taps] >= 0).sum(axis=0)  # unpadded reads of channel 0's taps (every channel alike)
        best = np.flatnonzero(reads == reads.max())
        tap = _central(best, np.stack(np.divmod(np.arange(taps), g.kW), axis=1), ((g.kH - 1) / 2, (g.kW - 1) / 2))
        pattern = cols[:, np.arange(g.C) * taps + tap].T.copy()
        constant = grad_output_rows(_labels(g.grad_output_shape), g)[0].astype(np.int64) - 1
        di, dj = divmod(tap, g.kW)
        entries = np.ravel_multi_index((np.zeros(g.C, int), np.arange(g.C), np.full(g.C, di), np.full(g.C, dj)),
                                       g.weight_shape)
        return Slots(gradient, g, pattern, constant, entries, np.flatnonzero(pattern[0] >= 0))
    if gradient == "grad_input":
        a = im2col_transposed(_labels(g.grad_output_shape), g).astype(np.int64) - 1  # (N·H·W, K)
        reads = (a >= 0).sum(axis=1)
        best = np.flatnonzero(reads == reads.max())
        n, h, w = np.unravel_index(np.arange(a.shape[0]), (g.N, g.H, g.W))
        r = _central(best, np.stack([n * 1e6, h, w], axis=1), (0, (g.H - 1) / 2, (g.W - 1) / 2))
        contributing = a[r] >= 0
        wr = weight_rows(_labels(g.weight_shape), g).astype(np.int64) - 1  # (K, C)
        pattern = np.where(contributing[None, :], wr.T, -1)
        entries = np.ravel_multi_index((np.full(g.C, n[r]), np.arange(g.C), np.full(g.C, h[r]), np.full(g.C, w[r])),
                                       g.input_shape)
        return Slots(gradient, g, pattern, a[r][contributing], entries, np.flatnonzero(contributing))
    raise ValueError(f"unknown gradient {gradient!r}")


@functools.lru_cache(maxsize=4)
def _background(fmt: Format, g: Geometry) -> tuple[np.ndarray, ...]:
    return background(fmt, g, np.random.default_rng(SEED))


def _base_tensors(fmt: Format, g: Geometry) -> dict[str, np.ndarray]:
    """Fresh copies of the ordinary values every probe case starts from."""
    x, w, d = _background(fmt, g)
    return {"input": x.copy(), "weight": w.copy(), "grad_output": d.copy()}


def build_case(slots: Slots, fmt: Format, A: float, rows: list[np.ndarray]) -> Case:
    """A case of ``rows`` (one per slot, at most :attr:`Slots.count`) with the shared operand ``A``,
    on ordinary background values; it requests ``slots.gradient`` only."""
    g = slots.geometry
    if len(rows) > slots.count:
        raise ValueError(f"{len(rows)} probe rows for {slots.count} slots")
    t = _base_tensors(fmt, g)
    pat = t[slots.tensor]
    pat[...] = 0.0  # the pattern tensor holds the probes only
    if slots.constant.size:
        t["grad_output"].flat[slots.constant] = A
    for s, row in enumerate(rows):
        idx = slots.pattern[s]
        ok = idx >= 0
        if np.any(row[~ok] != 0):
            raise ValueError("a probe row has a term at a structurally zero fold position")
        pat.flat[idx[ok]] = row[ok]
    return Case(t["input"], t["weight"], t["grad_output"], stride=g.stride, padding=g.padding, format=fmt,
                gradients=(slots.gradient,))


def read_rows(slots: Slots, case: Case) -> tuple[float, np.ndarray]:
    """The shared operand ``A`` and the pattern rows ``(count, K)`` a probe case holds."""
    t = {"input": case.input, "weight": case.weight, "grad_output": case.grad_output}
    A = float(t["grad_output"].flat[slots.constant[0]]) if slots.constant.size else 1.0
    pat = t[slots.tensor]
    rows = np.where(slots.pattern >= 0, pat.ravel()[np.maximum(slots.pattern, 0)], 0.0)
    return A, rows


# --- running a backend ------------------------------------------------------------------------

def _run(backend, case: Case) -> np.ndarray | None:
    """The backend's gradient of a probe case (float64), or None where it raised or misbehaved. A
    backend whose worker crashed or hung (:mod:`difftest.isolation`) ends its fingerprint: the
    :class:`~difftest.errors.BackendCrashed` or :class:`~difftest.errors.BackendTimedOut` goes on."""
    from ..backends.base import backward

    try:
        out = backward(backend, case.input, case.weight, case.grad_output, case.stride, case.padding, case.gradients)
        (g,) = case.gradients
        a = np.asarray(out[g], dtype=np.float64)
        return a if a.shape == case.geometry.shape_of(g) else None
    except (BackendCrashed, BackendTimedOut):
        raise
    except Exception:  # the backend is on trial: what it raises makes its answers undecidable
        return None


def _results(slots: Slots, out: np.ndarray | None, n: int) -> np.ndarray:
    if out is None:
        return np.full(n, np.nan)
    return out.ravel()[slots.entries[:n]]


# --- exact helpers -----------------------------------------------------------------------------

def _min_normal_exp(fmt: Format) -> int:
    return fmt.emin + fmt.prec - 1


def _holds(fmt: Format, v: Fraction) -> bool:
    return fmt.round(v) == v


def _eq(result: float, exact) -> bool:
    """``result`` (a float) is exactly ``exact`` (a float or Fraction); NaN never is."""
    return math.isfinite(result) and Fraction(result) == Fraction(exact)


def _nonzero(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = np.flatnonzero(row)
    return k, row[k]


def _log2(v: float) -> int | None:
    """``e`` where ``v = 2^e`` exactly; None otherwise."""
    m, e = math.frexp(abs(v))
    return e - 1 if m == 0.5 else None


