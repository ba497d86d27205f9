"""Arithmetic fingerprints: what a backend's Conv2D backward really computes, per gradient.

A ``precision`` verdict says *that* a backend left the certified envelope, not *why*.
:func:`fingerprint` answers the why: it runs crafted probe cases through the backend's real
conv2d backward and infers, for each gradient, the arithmetic that explains every result —
or ``None`` (JSON ``null``) where the probes cannot decide. Each claim comes with an evidence
case (a :class:`~difftest.case.Case`, saved as ``DIR/<backend>/<gradient>-<property>.npz`` by
:func:`write`) that replays with ``difftest check`` and from whose output :func:`derive`
re-derives the claim.

**Slots.** Every gradient entry is a fold (a sum) along its GEMM's inner dimension
(:func:`difftest.layouts.gemm_operands`: ``(n, i, j)`` for ``grad_weight`` and ``grad_bias``,
``(di, dj, o)`` for ``grad_input``). Setting one operand of an entry's fold to a constant ``A``
makes the entry sum a pattern ``A·B[k]`` written into the other operand, in fold order:

* ``grad_bias[o] = Σ_k δ_rows[o, k]``: slot ``o`` writes its pattern into ``δ[:, o]`` (no
  product: ``A = 1``);
* ``grad_weight[0, c, t] = Σ_k δ_rows[0, k]·im2col(x)[k, (c, t)]``: ``δ[:, 0] = A`` and slot
  ``c`` writes into ``x[:, c]`` at the positions tap ``t`` reads (the tap that reads the most
  unpadded positions: the centre with "same" padding, where that is all of ``x[:, c]``);
* ``grad_input[n*, c, h*, w*] = Σ_k im2col_transposed(δ)[(n*, h*, w*), k]·w_rows[k, c]``:
  the δ elements that entry reads are ``A`` and slot ``c`` writes into ``w[:, c]`` (the entry
  with the most contributing taps: an interior one, nearest the centre).

Each slot is an independent fold, so one case carries one probe variant per channel
(:class:`Slots`); positions that are structurally zero for the entry (padding reads, steps of a
stride that miss it) stay zero. The rest of the tensors holds ordinary values
(:func:`difftest.probes.background`). A probe case requests only its gradient, and holds the
variants of one property (so its file is that property's evidence).

**Properties** (each derived from the results alone; undecidable: ``None``):

* ``accumulator_bits`` ``W`` — two-term folds ``{2^k·X, X}`` (powers of two: any product keeps
  them): the sum ``(2^k + 1)·X`` survives iff every partial sum holding it has ``k + 1`` bits,
  in any order (the other terms are exact zeros). Kept at ``k`` proves ``W ≥ k + 1``; lost at
  ``k < p`` (the output format still holds it) proves ``W ≤ k``. For ``k = p`` the output
  itself cannot hold ``2^p + 1``: the three-term folds ``{2^p·X, X, −2^p·X}`` (exact sum ``X``)
  at several placements, mirrored for folds that run backwards, decide it instead — a result
  other than ``X`` proves that some partial sum rounded ``2^p + 1``, so ``W ≤ p``. A claim needs
  both bounds to meet; a sum wider than the format that no placement betrays stays ``None``. A
  result that is neither the exact sum nor a rounding of it (the big term alone, or a
  power-of-two step of ``X`` away) decides nothing: ``None``.
* ``product_bits`` ``q`` — ``{−X, X·(1 + 2^-t)}`` at the first two fold positions: the exact sum
  ``X·2^-t`` needs one bit of each term; inputs rounded to ``q ≤ t`` bits (to nearest or
  toward zero) turn ``1 + 2^-t`` into ``1`` and the sum into 0. Kept for every ``t < p`` gives
  ``q = p``; otherwise ``q`` is the first ``t`` lost, provided the loss cannot be the
  accumulator's: ``W > q`` (then ``0 + X(1 + 2^-q)`` is exact too) or a known order in which the
  two terms meet first (sequential, or blocked with both in one block). For ``grad_bias`` (no
  products) it is the bits δ keeps.
* ``rounding`` — with ``W`` known, ``{±1, ±f·ulp_W(1)}`` for ``f = 3/4, 1/4``: round to
  nearest moves ``1 + 3/4 ulp`` up and ``1 + 1/4 ulp`` down (symmetric for negatives), truncation
  moves both toward zero; anything else that lands on ``1`` or ``1 + ulp`` (upward, downward,
  stochastic) is ``other``; a result on neither is ``None``.
* ``order`` — FPRev (USENIX ATC 2025): ``X`` at every usable fold position, ``+M·X`` at ``i``
  and ``−M·X`` at ``j``, with ``M = 2^(W + ⌈log2 K⌉ + 2)`` large enough that a partial sum
  ``±M·X`` swallows any count of ``X``; the result counts the ``X`` outside the subtree where
  ``±M`` cancel, which differs between summation trees. Each candidate (:data:`Order`:
  sequential; blocked-``L`` for ``L`` = 2…16, multiples of 8 — BLAS K-blocks —, powers of two
  and the fold's natural block lengths; pairwise by recursive halving and numpy's 8-way unrolled
  pairwise) is simulated exactly (rounding to ``W`` bits with the claimed rounding, the blocked
  ones in one pass) on every probe row; the pairs are chosen greedily to separate the
  candidates, then at random, one pair per slot. An order is claimed only when the candidates
  that match every observation share one name (``block`` when they share one ``L``); else
  ``unknown``. Orders are over the fold positions as :mod:`difftest.geometry` lays them out.
* ``fma`` — with ``q = p`` and ``W`` known, ``s = min(W − 1, ⌊(p − 1)/2⌋) ≥ 2`` and
  ``σ = ⌊(p − 1 + s)/4⌋ − 1`` (products near ``2^14`` for binary32, inside binary16's range):
  ``A = a·2^σ`` with ``a = 1 + 2^-s``, terms
  ``−A·B'`` then ``A·b`` with ``B' = 1 + 2^-(p−1−s)`` and ``b = B' + 2^-(p−1)``, so that ``a·B'``
  fits ``p`` bits exactly and ``a·b = a·B' + 2^-(p−1) + 2^-(p−1+s)`` does not. A product rounded
  before it is added gives ``2^(2σ)·2^-(p−1)``; a fused multiply-add (or any sum that takes the
  product unrounded) gives ``2^(2σ)·2^-(p−1)·(1 + 2^-s)``, which needs ``s + 1 ≤ W`` bits. Fused
  at any placement: ``true``. Rounded-product results — ``false`` when the claimed order makes
  the two terms meet directly (sequential; blocked, both in one block) at one of them; else
  ``None``. Other results (a narrow sum that rounded ``−A·B'`` on its own) say nothing.
  ``None`` for ``grad_bias`` (no products) and where ``q < p`` (such products are exact in the
  accumulator: fused or not cannot show).
* ``subnormal_outputs`` — normal inputs with subnormal results: ``{N0 + r, −N0}`` (``N0`` the
  smallest normal, ``r`` a subnormal; every other partial sum is one term plus exact zeros, so
  the order does not matter) and, where there are products, one product ``2^-4·(N0 + N0/4)``. A
  guard ``{2N0, N0}`` must come back exact first: an accumulator that cannot hold the format's
  small normals (binary16 accumulation of binary32) loses subnormals by range, not by flushing,
  and the answer is ``None``.
* ``subnormal_inputs`` — a subnormal input ``s`` times ``A = 2^α`` (a normal product, far from
  any accumulator's range limits): kept iff ``A·s`` comes back, flushed iff 0. For ``grad_bias``
  (no product) ``{N0, s}`` at the first two positions: flushed inputs give ``N0``; but so would
  a flush of the subnormal partial sum ``0 + s``, so ``flushed`` needs subnormal outputs kept or
  a known order in which ``N0`` and ``s`` meet first.
* ``error_scaling`` — per slot one entry whose fold has a single non-zero term ``t·1`` amid a
  channel map of large values ``2^e`` it does not read (zero weights or zero δ there). Every
  per-element arithmetic returns ``t`` exactly; FFT and Winograd carry errors of the map's norm
  into it. ``per_element`` if every entry is exact, ``global`` if the error grows with ``2^e``
  (16 times the error of the smallest map at the largest, ``2^16`` times larger, or exact there).
* ``deterministic`` — three runs of one ordinary case (:func:`difftest.probes.background`),
  bitwise.

**Claims that verify themselves.** The order probe separates the candidates with at most
:data:`ORDER_PAIRS` pairs, chosen to tell the candidates from *each other*: a backend outside the
candidate set (sequential but for two swapped positions) can match one on every probe. So a
claimed order (with its block) is then emulated exactly — in rational arithmetic, every sum
rounded to ``W`` bits in the claimed rounding — on :data:`VERIFY_CASES` fresh cases whose slots
(up to :data:`VERIFY_SLOTS` each) hold random values of the format at every usable position,
operands rounded to the claimed ``product_bits``, and compared bit for bit with the
backend (:func:`verify_order`). Products are rounded as the format multiplies or to ``W`` bits,
or, within a chain, fused into the sum; a chain starts from its first product as it is or added
to zero; a claimed ``pairwise`` is either pairwise candidate. The claim stands if one of these
reproduces every entry, and the variants that did are kept. Otherwise the order is ``unknown``
(``notes`` says how many entries differed), and the claims that may rest on the order
(``product_bits``, ``fma``, ``subnormal_inputs``) are made again without it. An ``fma`` claim must
agree with the variants that reproduced the order, else it is ``None`` with the reason in ``notes``.

Evidence of a property whose variants fit in one case is that case. Where they need several
(few channels), the evidence is a case of the decisive variants only, run again: the claim
stands only when the evidence case gives it again. Claims that rest on other claims (``fma``
``false`` and the order, ``rounding`` and ``W``) are derived from their evidence with those
claims as context (:func:`derive`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .claims import COLUMNS, cell
from .case import Case
from .errors import BackendCrashed, BackendTimedOut
from .formats import Format
from .geometry import GRADIENTS, Geometry
from .layouts import grad_output_rows, im2col, im2col_transposed, weight_rows
from .probes import background

__all__ = ["FIELDS", "PROPERTIES", "Fingerprint", "Order", "Slots", "default_geometry", "derive", "fingerprint",
           "layer_geometry", "order_candidates", "parse_geometry", "rederive", "slots_of", "table", "to_json", "write"]

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
    from .catalogue import LAYERS

    return LAYERS["resnet18.layer1.0.conv1"].geometry(1, 16)


def layer_geometry(name: str, max_macs: int = 20_000_000) -> Geometry:
    """A catalogue layer at the largest input size whose gradient costs at most ``max_macs``."""
    from .catalogue import get_layer, largest_size, smallest_size

    layer = get_layer(name)
    return plain_only(layer.geometry(1, largest_size(layer, 1, max_macs) or smallest_size(layer)), f"--layer {name}")


def plain_only(g: Geometry, what: str) -> Geometry:
    """``g`` if the probes can be laid out in it: one group, no dilation, square stride and
    padding (the fold slots of this module are built for TorchLean's own geometry); else a
    :class:`DifftestError` saying so."""
    from .errors import DifftestError

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
    from .errors import DifftestError

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
    from .backends.base import backward

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


# --- orders ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Order:
    """A candidate summation tree over a fold of length ``K``: ``sequential``; ``blocked`` with
    block length ``block`` (each block folded from its first term, the block sums added in
    turn: a K-split GEMM, ``emu-blocked-L``); ``pairwise`` (``variant`` ``halving``: split at
    ``⌊n/2⌋``; ``numpy``: numpy's 8-way unrolled pairwise sum, blocks of at most 128)."""

    name: str
    block: int | None = None
    variant: str = ""

    @property
    def label(self) -> str:
        return self.name + (f"-{self.block}" if self.block else "") + (f"-{self.variant}" if self.variant else "")

    def fold(self, V: np.ndarray, rnd) -> np.ndarray:
        """The fold of each row of ``V`` in this order, rounding each sum with ``rnd``."""
        if self.name == "sequential":
            return _sequential(V, rnd)
        if self.name == "blocked":
            acc = None
            for s in range(0, V.shape[1], self.block):
                part = _sequential(V[:, s:s + self.block], rnd)
                acc = part if acc is None else rnd(acc + part)
            return acc
        if self.variant == "numpy":
            return _numpy_pairwise(V, rnd)
        return _halving(V, rnd)

    def meets_first(self, i: int, j: int) -> bool:
        """Whether the terms at fold positions ``i < j`` (nothing but zeros between them) are
        added to each other before either meets another term: one running sum carries ``i`` to
        ``j`` (sequential; blocked with both in one block)."""
        if self.name == "sequential":
            return True
        return self.name == "blocked" and i // self.block == j // self.block


def _sequential(V: np.ndarray, rnd) -> np.ndarray:
    acc = V[:, 0].copy()
    for k in range(1, V.shape[1]):
        acc = rnd(acc + V[:, k])
    return acc


def _halving(V: np.ndarray, rnd) -> np.ndarray:
    n = V.shape[1]
    if n == 1:
        return V[:, 0].copy()
    return rnd(_halving(V[:, : n // 2], rnd) + _halving(V[:, n // 2:], rnd))


def _numpy_pairwise(V: np.ndarray, rnd) -> np.ndarray:
    """numpy's ``pairwise_sum`` (``loops_utils.h``): below 8 terms a plain loop; up to 128 eight
    running sums over the terms ≡ j (mod 8), combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)),
    then the remainder in turn; above, split at ``n/2`` rounded down to a multiple of 8."""
    n = V.shape[1]
    if n < 8:
        return _sequential(V, rnd)
    if n <= 128:
        end = n - n % 8
        r = [V[:, j].copy() for j in range(8)]
        for i in range(8, end, 8):
            for j in range(8):
                r[j] = rnd(r[j] + V[:, i + j])
        res = rnd(rnd(rnd(r[0] + r[1]) + rnd(r[2] + r[3])) + rnd(rnd(r[4] + r[5]) + rnd(r[6] + r[7])))
        for i in range(end, n):
            res = rnd(res + V[:, i])
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return rnd(_numpy_pairwise(V[:, :n2], rnd) + _numpy_pairwise(V[:, n2:], rnd))


def natural_blocks(gradient: str, g: Geometry) -> tuple[int, ...]:
    """Block lengths a kernel's loop nest makes of the fold: for ``grad_input`` the output
    channels of one tap (a GEMM per tap, as im2col + col2im does) and of one row of taps; for the
    others one output row and one image."""
    if gradient == "grad_input":
        return (g.O, g.kW * g.O)
    return (g.out_w, g.out_h * g.out_w)


def block_lengths(gradient: str, g: Geometry, K: int) -> list[int]:
    """The blocked candidates' ``L``: 2 to 16, every multiple of 8 (BLAS K-blocking: OpenBLAS's
    448, 384, …), the powers of two and the fold's natural blocks, all below ``K``."""
    ls = set(range(2, 17)) | set(range(8, K, 8)) | {1 << e for e in range(1, max(1, K - 1).bit_length())}
    return sorted(L for L in ls | set(natural_blocks(gradient, g)) if 2 <= L < K)


def order_candidates(gradient: str, g: Geometry, K: int) -> list[Order]:
    """The candidate orders of a fold of length ``K`` (blocks of ``K`` or more are sequential)."""
    return ([Order("sequential")] + [Order("blocked", L) for L in block_lengths(gradient, g, K)]
            + [Order("pairwise", variant="halving"), Order("pairwise", variant="numpy")])


def _blocked_folds(V: np.ndarray, lengths, rnd) -> np.ndarray:
    """``Order("blocked", L).fold(V, rnd)`` for every ``L`` of ``lengths`` at once (``L >= K``:
    sequential): one pass over the fold, the candidates as rows of one array."""
    K = V.shape[1]
    L = np.asarray(lengths)
    part = np.repeat(V[None, :, 0], len(L), axis=0)
    acc = np.zeros_like(part)
    started = np.zeros(len(L), dtype=bool)
    for k in range(1, K):
        new = k % L == 0
        if new.any():
            idx, rest = np.flatnonzero(new), np.flatnonzero(~new)
            acc[idx] = np.where(started[idx, None], rnd(acc[idx] + part[idx]), part[idx])
            started[idx] = True
            part[rest] = rnd(part[rest] + V[:, k])
            part[idx] = V[:, k]
        else:
            part = rnd(part + V[:, k])
    return np.where(started[:, None], rnd(acc + part), part)


def predict(cands: list[Order], V: np.ndarray, rnd) -> np.ndarray:
    """Each candidate's fold of each row of ``V``: ``(candidates, rows)``."""
    chain = [i for i, c in enumerate(cands) if c.name in ("sequential", "blocked")]
    out = np.empty((len(cands), V.shape[0]))
    if chain:
        out[chain] = _blocked_folds(V, [cands[i].block or V.shape[1] for i in chain], rnd)
    for i, c in enumerate(cands):
        if i not in chain:
            out[i] = c.fold(V, rnd)
    return out


def round_bits(v: Fraction, W: int, mode: str) -> Fraction:
    """``v`` rounded to ``W`` significant bits (``nearest``: ties to even; ``toward_zero``), no
    exponent range: the accumulator of :func:`verify_order`'s emulation."""
    if v == 0:
        return v
    sign, a = (1 if v > 0 else -1), abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2^e <= a < 2^(e+1), or one below
    if a < Fraction(2) ** e:
        e -= 1
    scale = Fraction(2) ** (W - 1 - e)
    q, r = divmod(a.numerator * scale.numerator, a.denominator * scale.denominator)
    den = a.denominator * scale.denominator
    if mode == "nearest" and (2 * r > den or (2 * r == den and q % 2)):
        q += 1
    return sign * Fraction(q) / scale


def emulate(order: Order, terms: list[Fraction], rnd, leaf, fused: bool, first=None) -> Fraction:
    """The fold of ``terms`` (exact products, in fold order) in ``order``: each chain (the whole
    fold, a block) starts from its first term rounded on its own (``first``, default ``leaf``: a
    kernel may hold the first product as the format computed it) and adds the others rounded on
    their own (``leaf``) or, ``fused``, exactly, rounding each sum (``rnd``); block sums and pairwise
    sums add rounded values."""
    K = len(terms)
    leaves = [leaf(t) for t in terms]
    start = leaves if first is None else [first(t) for t in terms]

    def chain(lo: int, hi: int) -> Fraction:
        acc = start[lo]
        for k in range(lo + 1, hi):
            acc = rnd(acc + (terms[k] if fused else leaves[k]))
        return acc

    if order.name == "sequential":
        return chain(0, K)
    if order.name == "blocked":
        acc = None
        for s in range(0, K, order.block):
            part = chain(s, min(s + order.block, K))
            acc = part if acc is None else rnd(acc + part)
        return acc
    V = np.array([leaves], dtype=object)  # pairwise: sums of rounded leaves
    return order.fold(V, np.vectorize(rnd, otypes=[object]))[0]


def verify_order(backend, slots: Slots, fmt: Format, claims: dict, cases: int = VERIFY_CASES) -> tuple[set, str]:
    """Emulate the claimed order (``claims``: ``order``, ``block``, ``accumulator_bits``,
    ``rounding``, and ``product_bits`` ``q``: operands rounded to ``q`` bits, to nearest, before
    they multiply) exactly on ``cases`` fresh cases of random values and compare every slot bit for
    bit with the backend. Returns the variants (``(fused, leaf, start, candidate)``) that reproduced every entry,
    and, when none did, why."""
    W, mode = claims.get("accumulator_bits"), claims.get("rounding")
    q = claims.get("product_bits") or fmt.prec
    operand = (lambda v: Fraction(v)) if q >= fmt.prec else (lambda v: round_bits(Fraction(v), q, "nearest"))
    # the claim names an order (and a block); pairwise is either candidate variant
    orders = [c for c in order_candidates(slots.gradient, slots.geometry, slots.K)
              if c.name == claims["order"] and c.block == claims.get("block")] or [Order(claims["order"], claims.get("block"))]
    order = orders[0]
    rng = np.random.default_rng(SEED + 1)
    rnd = functools.partial(round_bits, W=W, mode=mode)
    # a product rounded as the format multiplies, or to the accumulator's width; a chain started from
    # it as it is (a register holding the first product), or from it added to zero (rounded to W)
    leaves = {"format": fmt.round} if W == fmt.prec else {"format": fmt.round, "accumulator": rnd}
    starts = ("leaf",) if W == fmt.prec else ("leaf", "added")
    fused_too = slots.gradient != "grad_bias" and order.name != "pairwise"
    variants = {(f, name, s, o) for f in ((False, True) if fused_too else (False,)) for name in leaves for s in starts
                for o in range(len(orders))}
    compared = differed = 0
    for _ in range(cases):
        values = fmt.round_array(rng.standard_normal((min(slots.count, VERIFY_SLOTS), slots.usable.size)))
        values[values == 0] = 1.0
        A = 1.0 if slots.gradient == "grad_bias" else float(fmt.round_array(np.array([rng.uniform(0.5, 2.0)]))[0])
        rows = [slots.row(dict(enumerate(v))) for v in values]
        out = _results(slots, _run(backend, build_case(slots, fmt, A, rows)), len(rows))
        for row, got in zip(rows, out):
            terms = [operand(A) * operand(float(b)) for b in row]
            compared += 1
            matched = {(f, name, s, o) for f, name, s, o in variants
                       if _eq(float(got), emulate(orders[o], terms, rnd, leaves[name], f,
                                                  None if s == "leaf" else (lambda t, lf=leaves[name]: rnd(lf(t)))))}
            differed += not matched
            variants &= matched
    if variants:
        return variants, ""
    return set(), (f"{order.label} ({W} bits, {mode}, {q}-bit operands) did not reproduce the backend bit for bit on "
                   "fresh random folds: "
                   f"{differed} of {compared} entries differed from every variant (products rounded on their own"
                   + (" or fused" if fused_too else "") + ")")


def rounder(W: int, mode: str, units_bits: int):
    """Rounding of a float64 value to ``W`` significant bits (``nearest``: ties to even;
    ``toward_zero``: truncation), exact while the simulated integers stay below ``2^53``
    (``units_bits`` bounds their size); None where float64 cannot simulate it."""
    if W >= 53:
        return (lambda v: v) if mode == "nearest" and W == 53 else None  # float64 arithmetic is RN53
    if units_bits + 1 > 53 or mode not in ("nearest", "toward_zero"):
        return None
    f = np.rint if mode == "nearest" else np.trunc

    def rnd(v: np.ndarray) -> np.ndarray:
        m, e = np.frexp(v)
        return np.ldexp(f(np.ldexp(m, W)), e - W)

    return rnd


def _order_scale(W: int, K: int) -> tuple[float, int]:
    """``(X, E)``: the small term ``X`` and ``M = 2^E`` (in units of ``X``) of the order probe,
    ``E = W + ⌈log2 K⌉ + 2`` so that ``M·X`` swallows any count of ``X`` (``K·X < ulp(M·X)/4``),
    ``X`` centred so that ``X`` and ``M·X`` sit near 1 (inside narrow accumulators' range)."""
    E = W + max(1, (K - 1).bit_length()) + 2
    return math.ldexp(1.0, -((E + 1) // 2)), E


def _order_rows(slots: Slots, pairs, X: float, E: int) -> list[np.ndarray]:
    rows = []
    for i, j in pairs:
        r = np.zeros(slots.K)
        r[slots.usable] = X
        r[slots.usable[i]], r[slots.usable[j]] = math.ldexp(X, E), -math.ldexp(X, E)
        rows.append(r)
    return rows


def _pair_pool(n: int, blocks, rng: np.random.Generator, count: int = 48) -> list[tuple[int, int]]:
    """Pairs ``i < j < n`` of usable positions: at block boundaries and at random."""
    pool = {(0, 1), (0, 2), (1, 2), (0, n - 1), (n - 2, n - 1), (n // 2 - 1, n // 2), (1, n - 1)}
    for b in blocks:
        for i, j in ((b - 1, b), (b, b + 1), (0, b), (b - 1, 2 * b), (b // 2, b + b // 2)):
            pool.add((i, j))
    while len(pool) < count + 40 and n > 2:
        i, j = sorted(int(v) for v in rng.choice(n, 2, replace=False))
        pool.add((i, j))
    return sorted((i, j) for i, j in pool if 0 <= i < j < n)


def _split_score(classes: np.ndarray, column: np.ndarray) -> int:
    """Pairs of candidates still alike after splitting ``classes`` by ``column`` (fewer: better)."""
    _, counts = np.unique(np.stack([classes.astype(np.float64), column], axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1)).sum())


def choose_pairs(slots: Slots, W: int, mode: str, budget: int) -> list[tuple[int, int]]:
    """Up to ``budget`` pairs (indices of usable positions) that separate the candidate orders:
    greedily the pair that leaves the fewest pairs of candidates alike, then others at random
    from the pool (so that an order outside the candidates has many chances to miss)."""
    n = slots.usable.size
    if n < 3 or budget < 1:
        return []
    cands = order_candidates(slots.gradient, slots.geometry, slots.K)
    X, E = _order_scale(W, slots.K)
    rnd = rounder(W, mode, E + 2)
    if rnd is None:
        return []
    rng = np.random.default_rng(SEED)
    blocks = [L for L in block_lengths(slots.gradient, slots.geometry, slots.K) if L & (L - 1) == 0]
    pool = _pair_pool(n, blocks + list(natural_blocks(slots.gradient, slots.geometry)), rng)
    pred = predict(cands, np.stack(_order_rows(slots, pool, 1.0, E)), rnd)  # in units of X
    classes = np.zeros(len(cands), dtype=np.int64)
    chosen: list[int] = []
    score = _split_score(classes, np.zeros(len(cands)))
    while len(chosen) < budget:
        scores = [_split_score(classes, pred[:, p]) if p not in chosen else score for p in range(len(pool))]
        best = int(np.argmin(scores))
        if scores[best] >= score:
            break
        chosen.append(best)
        score = scores[best]
        classes = np.unique(np.stack([classes.astype(np.float64), pred[:, best]], axis=1), axis=0,
                            return_inverse=True)[1].ravel()
    rest = [int(p) for p in rng.permutation(len(pool)) if p not in chosen]
    chosen += rest[: max(0, min(budget, ORDER_PAIRS) - len(chosen))]
    return [pool[p] for p in chosen]


# --- observations and the properties ------------------------------------------------------------

@dataclass(frozen=True)
class Obs:
    """One probe slot: the shared operand ``A``, the pattern ``B`` (fold order) and the result."""

    A: float
    B: np.ndarray
    result: float

    def terms(self) -> tuple[np.ndarray, list[Fraction]]:
        """Positions and exact values ``A·B[k]`` of the non-zero terms."""
        k, v = _nonzero(self.B)
        return k, [Fraction(self.A) * Fraction(float(b)) for b in v]


@dataclass
class Context:
    """What the inference of one gradient's property may use: its format, slots and the
    claims already made (``W`` before ``rounding`` before ``order`` …)."""

    fmt: Format
    slots: Slots
    claims: dict = field(default_factory=dict)

    def order(self) -> Order | None:
        name = self.claims.get("order")
        if name in ("sequential", "blocked", "pairwise") and (name != "blocked" or self.claims.get("block")):
            return Order(name, self.claims.get("block"))
        return None


@dataclass
class Inference:
    """A property's value (None: undecidable) and the slot indices that prove it."""

    value: object
    decisive: list[int] = field(default_factory=list)


NONE = Inference(None)


def _accumulator_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    p, n, X = ctx.fmt.prec, ctx.slots.usable.size, 2.0**-10
    if n < 2:
        return 1.0, []
    rows = [ctx.slots.row({0: math.ldexp(X, k), 1: X}) for k in range(1, p)]
    big = math.ldexp(X, p)
    forward = {(0, 1, 2), (1, 0, 2), (0, 1, n - 1), (0, n // 2, n - 1), (n - 3, n - 2, n - 1)} if n >= 3 else set()
    placements = forward | {(l, j, i) for i, j, l in forward}  # and mirrored, for folds run backwards
    for i, j, l in sorted(pl for pl in placements if len(set(pl)) == 3 and min(pl) >= 0):
        rows.append(ctx.slots.row({i: big, j: X, l: -big}))  # 2^p·X and X may meet before -2^p·X does
    return 1.0, rows


def _infer_accumulator(ctx: Context, obs: list[Obs]) -> Inference:
    """Kept two-term sums bound ``W`` from below, lost ones (``k < p``) and wrong three-term sums
    from above; a claim where the bounds meet (module docstring)."""
    p = ctx.fmt.prec
    kept, lost, above = {}, {}, {}
    for s, o in enumerate(obs):
        _, v = o.terms()
        if len(v) not in (2, 3) or (len(v) == 2 and min(v) <= 0):
            continue
        X = min(abs(t) for t in v)
        k = _log2(float(max(abs(t) for t in v) / X))
        if k is None:
            continue
        if _eq(o.result, sum(v)):
            if len(v) == 2:
                kept[k] = s
            continue
        # a rounded sum: the big term alone, or a power-of-two step of X away from it (inf: out of range)
        rest = Fraction(o.result) - (Fraction(2) ** k * X if len(v) == 2 else 0) if math.isfinite(o.result) else None
        if rest is not None and rest != 0 and (rest < 0 or _log2(float(rest / X)) is None or rest < 2 * X):
            return NONE  # neither exact nor rounded: not arithmetic these probes can read
        (lost if len(v) == 2 else above).setdefault(k, s)
    low = max((k + 1 for k in kept), default=1)
    uppers = {k: s for k, s in lost.items() if k < p} | {k: s for k, s in above.items() if k not in lost}
    if not uppers or any(k < low - 1 for k in lost if k < p):
        return NONE
    high = min(uppers)
    if high != low:
        return NONE
    return Inference(low, ([kept[low - 1]] if low - 1 in kept else []) + [uppers[high]])


def _product_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    if ctx.slots.usable.size < 2:
        return 1.0, []
    return 1.0, [ctx.slots.row({0: -1.0, 1: 1.0 + math.ldexp(1.0, -t)}) for t in range(1, ctx.fmt.prec)]


def _infer_product(ctx: Context, obs: list[Obs]) -> Inference:
    """``q = p`` where every ``1 + 2^-t`` survives, else the first ``t`` lost, where the loss cannot
    be the accumulator's (module docstring)."""
    p = ctx.fmt.prec
    kept, lost = {}, {}
    for s, o in enumerate(obs):
        k, v = o.terms()
        if len(v) != 2 or not v[0] < 0 < v[1]:
            continue
        e = _log2(float(v[1] / -v[0] - 1))  # 1 + 2^-t: e = -t
        if e is None:
            continue
        if _eq(o.result, v[0] + v[1]):
            kept[-e] = s
        elif _eq(o.result, 0.0):
            lost[-e] = (s, int(k[0]), int(k[1]))
        else:
            return NONE
    if not lost:
        return Inference(p, [kept[p - 1]]) if p - 1 in kept else NONE
    q = min(lost)
    if (q > 1 and q - 1 not in kept) or any(t > q for t in kept):
        return NONE  # kept at q - 1 proves q bits; kept beyond q would contradict the loss
    s, i, j = lost[q]
    W, order = ctx.claims.get("accumulator_bits"), ctx.order()
    if not ((W is not None and W > q) or (order is not None and order.meets_first(i, j))):
        return NONE
    return Inference(q, ([kept[q - 1]] if q > 1 else []) + [s])


def _rounding_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    W = ctx.claims.get("accumulator_bits")
    if W is None or ctx.slots.usable.size < 2:
        return 1.0, []
    ulp = math.ldexp(1.0, 1 - W)
    return 1.0, [ctx.slots.row({0: sign, 1: sign * f * ulp}) for sign in (1.0, -1.0) for f in (0.75, 0.25)]


#: How each rounding moves ``|1 + f·ulp|`` (True: away from zero) for ``(sign, f > 1/2)``.
_MODES = {
    "nearest": lambda sign, big: big,
    "toward_zero": lambda sign, big: False,
    "upward": lambda sign, big: sign > 0,
    "downward": lambda sign, big: sign < 0,
    "away": lambda sign, big: True,
}


def _infer_rounding(ctx: Context, obs: list[Obs]) -> Inference:
    W = ctx.claims.get("accumulator_bits")
    if W is None:
        return NONE
    seen = []
    for o in obs:
        _, v = o.terms()
        if len(v) != 2:
            continue
        big, small = sorted(v, key=abs, reverse=True)
        ulp = Fraction(2) ** (math.frexp(float(abs(big)))[1] - W)
        if _eq(o.result, big):
            away = False
        elif _eq(o.result, big + (ulp if big > 0 else -ulp)):
            away = True
        else:
            return NONE
        seen.append((1 if big > 0 else -1, abs(small) / ulp > Fraction(1, 2), away))
    if not seen:
        return NONE
    modes = [m for m, f in _MODES.items() if all(f(sign, big) == away for sign, big, away in seen)]
    value = "nearest" if "nearest" in modes else "toward_zero" if "toward_zero" in modes else "other"
    return Inference(value, list(range(len(obs))))


def _order_probe(ctx: Context, n_slots: int) -> tuple[float, list[np.ndarray]]:
    W, mode = ctx.claims.get("accumulator_bits"), ctx.claims.get("rounding")
    if W is None or mode not in ("nearest", "toward_zero"):
        return 1.0, []
    X, E = _order_scale(W, ctx.slots.K)
    return 1.0, _order_rows(ctx.slots, choose_pairs(ctx.slots, W, mode, n_slots), X, E)


def _infer_order(ctx: Context, obs: list[Obs]) -> Inference:
    """The candidates that predict every result exactly; a claim where they share one name."""
    W, mode = ctx.claims.get("accumulator_bits"), ctx.claims.get("rounding")
    if W is None or mode not in ("nearest", "toward_zero") or not obs:
        return NONE
    V = np.stack([o.B * o.A for o in obs])
    X = np.min(np.abs(V[V != 0]))
    V = V / X  # units of X: exact (powers of two)
    rnd = rounder(W, mode, int(np.log2(np.max(np.abs(V)))) + 2)
    if rnd is None:
        return NONE
    observed = np.array([o.result for o in obs]) / X
    cands = order_candidates(ctx.slots.gradient, ctx.slots.geometry, ctx.slots.K)
    pred = predict(cands, V, rnd)
    match = [c for c, p in zip(cands, pred) if np.array_equal(p, observed)]
    names = {c.name for c in match}
    if len(names) != 1:
        return Inference(("unknown", None), list(range(len(obs))))
    blocks = {c.block for c in match}
    block = blocks.pop() if len(blocks) == 1 else None
    # decisive: a few observations that rule out every candidate not matched
    wrong = pred != observed[None, :]  # (candidates, observations)
    open_ = np.array([c not in match for c in cands])
    decisive: list[int] = []
    while open_.any():
        best = int(np.argmax(wrong[open_].sum(axis=0)))
        decisive.append(best)
        open_ &= ~wrong[:, best]
    return Inference((names.pop(), block), sorted(decisive))


def _fma_terms(ctx: Context) -> tuple[int, int, int] | None:
    """``(s, σ, P)`` of the FMA probe, or None where it cannot decide."""
    W, q, P = ctx.claims.get("accumulator_bits"), ctx.claims.get("product_bits"), ctx.fmt.prec
    if ctx.slots.gradient == "grad_bias" or W is None or q != P:
        return None
    s = min(W - 1, (P - 1) // 2)
    if s < 2:
        return None
    return s, (P - 1 + s) // 4 - 1, P


def _fma_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    params, n = _fma_terms(ctx), ctx.slots.usable.size
    if params is None or n < 2:
        return 1.0, []
    s, sigma, P = params
    a = math.ldexp(1.0 + math.ldexp(1.0, -s), sigma)
    b_prime = 1.0 + math.ldexp(1.0, -(P - 1 - s))
    b = b_prime + math.ldexp(1.0, -(P - 1))
    placements = sorted({(0, 1), (1, 2), (0, 2), (3, 4), (0, 8), (n // 2, n // 2 + 1), (n - 2, n - 1), (0, n - 1)})
    return a, [ctx.slots.row({i: -math.ldexp(b_prime, sigma), j: math.ldexp(b, sigma)})
               for i, j in placements if 0 <= i < j < n]


def _infer_fma(ctx: Context, obs: list[Obs]) -> Inference:
    """Fused at some placement: True; unfused where the claimed order makes the two terms meet
    first: False; else None (module docstring)."""
    if ctx.slots.gradient == "grad_bias" or ctx.claims.get("product_bits") != ctx.fmt.prec:
        return NONE
    W, order = ctx.claims.get("accumulator_bits"), ctx.order()
    fused_at, unfused_at = [], []
    for s, o in enumerate(obs):
        k, v = o.terms()
        if len(v) != 2:
            continue
        fused = v[0] + v[1]
        unfused = ctx.fmt.round(v[1]) + v[0]
        if fused == unfused or not _holds(ctx.fmt, fused) or W is None or _bits(fused) > W:
            return NONE  # the probe cannot tell them apart here
        if _eq(o.result, fused):
            fused_at.append(s)
        elif _eq(o.result, unfused):
            unfused_at.append((s, int(k[0]), int(k[1])))
        # anything else (a narrow sum that rounded -A·B' on its own) says nothing either way
    if fused_at:
        return Inference(True, fused_at[:1])
    meets = [s for s, i, j in unfused_at if order is not None and order.meets_first(i, j)]
    if meets:
        return Inference(False, meets[:1])
    return NONE


def _bits(v: Fraction) -> int:
    """Significant bits of a dyadic rational."""
    if v == 0:
        return 0
    num, den = abs(v.numerator), v.denominator
    while num % 2 == 0:
        num //= 2
    return num.bit_length() if den & (den - 1) == 0 else 10**9


def _subnormal_output_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    fmt, n = ctx.fmt, ctx.slots.usable.size
    if n < 2:
        return 1.0, []
    e = _min_normal_exp(fmt)
    N0, r = math.ldexp(1.0, e), math.ldexp(1.0, e - 2) + math.ldexp(1.0, e - 4)
    products = ctx.slots.gradient != "grad_bias"
    A = 2.0**-4 if products else 1.0
    terms = [{0: 2 * N0, 1: N0}, {0: N0 + r, 1: -N0}, {0: -N0, 1: N0 + r}, {0: -(N0 + r), 1: N0}]
    if products:
        terms.append({0: 2.0**-4 * (N0 + N0 / 4)})
    return A, [ctx.slots.row({u: v / A for u, v in t.items()}) for t in terms]


def _infer_subnormal_outputs(ctx: Context, obs: list[Obs]) -> Inference:
    """The guard (smallest normals held) first, then every subnormal result kept or some flushed."""
    e = _min_normal_exp(ctx.fmt)
    guard, kept, flushed = [], [], []
    for s, o in enumerate(obs):
        _, v = o.terms()
        if not v:
            continue
        exact = sum(v)
        if abs(exact) >= Fraction(2) ** e:
            if not _eq(o.result, exact):
                return NONE  # the sums cannot hold the format's small normals: nothing to learn
            guard.append(s)
        elif _eq(o.result, exact):
            kept.append(s)
        elif _eq(o.result, 0.0):
            flushed.append(s)
        else:
            return NONE
    if not guard or not (kept or flushed):
        return NONE
    if flushed:
        return Inference("flushed", guard[:1] + flushed[:1])
    return Inference("kept", guard + kept)


def _subnormal_input_rows(ctx: Context) -> tuple[float, list[np.ndarray]]:
    fmt, n = ctx.fmt, ctx.slots.usable.size
    e = _min_normal_exp(fmt)
    subs = [math.ldexp(1.0, e - 1) + math.ldexp(1.0, e - 4), math.ldexp(1.0, e - 3),
            math.ldexp(1.0, e - 2) + math.ldexp(1.0, e - 3)]
    if ctx.slots.gradient == "grad_bias":
        if n < 2:
            return 1.0, []
        N0, few_bits = math.ldexp(1.0, e), (math.ldexp(1.0, e - 4), math.ldexp(1.0, e - 2) + math.ldexp(1.0, e - 4))
        return 1.0, [ctx.slots.row({0: N0, 1: s}) for s in few_bits]  # N0 + s: 5 bits, bfloat16 holds it
    return math.ldexp(1.0, min(-e - 8, 400)), [ctx.slots.row({0: s}) for s in subs]


def _infer_subnormal_inputs(ctx: Context, obs: list[Obs]) -> Inference:
    kept, flushed = [], []
    for s, o in enumerate(obs):
        k, v = o.terms()
        if len(v) == 1:  # A·s, a normal product of a subnormal input
            lost_value = 0
        elif len(v) == 2:  # N0 then s
            lost_value = v[0]
        else:
            continue
        if _eq(o.result, sum(v)):
            kept.append(s)
        elif _eq(o.result, lost_value):
            flushed.append((s, int(k[0]), int(k[-1])))
        else:
            return NONE
    if kept and not flushed:
        return Inference("kept", kept)
    if not flushed or kept:
        return NONE
    if ctx.slots.gradient == "grad_bias":
        order = ctx.order()
        if ctx.claims.get("subnormal_outputs") != "kept" and not (
                order is not None and all(order.meets_first(i, j) for _, i, j in flushed)):
            return NONE  # a flushed partial sum 0 + s would look the same
    return Inference("flushed", [s for s, _, _ in flushed])


# --- error scaling: its own layout ---------------------------------------------------------------

def _scaling_levels(fmt: Format) -> list[int]:
    """Exponents of the large channel maps: 0, 4, 8, 12, 16 (smaller steps for narrow ranges)."""
    step = max(1, min(4, ((fmt.emax or 127) - 6) // 4))
    return [step * i for i in range(5)]


#: The single term of each error-scaling entry.
_T = 0.75


def scaling_case(gradient: str, fmt: Format, g: Geometry) -> tuple[Case, np.ndarray, np.ndarray]:
    """The error-scaling case of a gradient, the flat gradient indices of its probe entries and
    each entry's level (the exponent of the map around it). See the module docstring."""
    slots = slots_of(gradient, g)
    t = _base_tensors(fmt, g)
    x, w, d = t["input"], t["weight"], t["grad_output"]
    rng = np.random.default_rng(SEED + 1)
    levels = _scaling_levels(fmt)

    def noise(shape, e):  # values of magnitude about 2^e, in the format
        return fmt.round_array(np.ldexp(1.0 + rng.random(shape), e))

    k0 = slots.usable[slots.usable.size // 2]
    if gradient == "grad_bias":
        d[...] = 0.0
        probe = np.arange(0, g.O, 2)
        rows = grad_output_rows(_labels(g.grad_output_shape), g).astype(np.int64) - 1
        lv = np.array([levels[(i // 2) % len(levels)] for i in probe])
        for o, e in zip(probe, lv):
            d.flat[rows[o, k0]] = _T
            if o + 1 < g.O:
                d[:, o + 1] = noise(d[:, o + 1].shape, e)
        entries = probe
    elif gradient == "grad_weight":
        S = min(g.O, g.C)
        taps = g.kH * g.kW
        tap = int(np.ravel_multi_index(np.unravel_index(slots.entries[0], g.weight_shape)[2:], (g.kH, g.kW)))
        drows = grad_output_rows(_labels(g.grad_output_shape), g).astype(np.int64) - 1
        cols = im2col(_labels(g.input_shape), g).astype(np.int64) - 1
        d[:, :S] = 0.0
        lv = np.array([levels[i % len(levels)] for i in range(S)])
        for i, e in enumerate(lv):
            d.flat[drows[i, k0]] = 1.0
            x[:, i] = noise(x[:, i].shape, e)
            x.flat[cols[k0, i * taps + tap]] = _T
        entries = np.ravel_multi_index((np.arange(S), np.arange(S), *(np.full(S, v) for v in divmod(tap, g.kW))),
                                       g.weight_shape)
    else:
        S = min(g.O, g.C)
        n, _, h, wc = (int(v) for v in np.unravel_index(slots.entries[0], g.input_shape))
        di, dj, _ = np.unravel_index(k0, (g.kH, g.kW, g.O))
        a = im2col_transposed(_labels(g.grad_output_shape), g).astype(np.int64) - 1
        r = np.ravel_multi_index((n, h, wc), (g.N, g.H, g.W))
        w[...] = 0.0
        lv = np.array([levels[i % len(levels)] for i in range(S)])
        for i, e in enumerate(lv):
            w[i, i, di, dj] = 1.0
            d[n, i] = noise(d[n, i].shape, e)
            d.flat[a[r, (di * g.kW + dj) * g.O + i]] = _T
        entries = np.ravel_multi_index((np.full(S, n), np.arange(S), np.full(S, h), np.full(S, wc)), g.input_shape)
    case = Case(x, w, d, stride=g.stride, padding=g.padding, format=fmt, gradients=(gradient,))
    return case, entries, lv


def _infer_scaling(results: np.ndarray, levels: np.ndarray) -> Inference:
    err = np.abs(results - _T)
    if not np.all(np.isfinite(err)):
        return NONE
    if np.all(err == 0):
        return Inference("per_element")
    lo, hi = err[levels == levels.min()].max(), err[levels == levels.max()].max()
    if hi > 0 and (lo == 0 or hi >= 16 * lo):
        return Inference("global")
    return NONE


# --- the whole fingerprint ----------------------------------------------------------------------

#: Probe builders and inferences of the slot-based properties.
_PROBES = {
    "accumulator_bits": (_accumulator_rows, _infer_accumulator),
    "product_bits": (_product_rows, _infer_product),
    "rounding": (_rounding_rows, _infer_rounding),
    "subnormal_outputs": (_subnormal_output_rows, _infer_subnormal_outputs),
    "subnormal_inputs": (_subnormal_input_rows, _infer_subnormal_inputs),
    "fma": (_fma_rows, _infer_fma),
}


@dataclass
class GradientPrint:
    """One gradient's claims and, for each claim, its evidence case."""

    claims: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # property -> Case
    paths: dict = field(default_factory=dict)  # property -> written file
    notes: dict = field(default_factory=dict)  # property -> why a probe's claim was withdrawn

    def to_dict(self, base: Path | None = None) -> dict:
        """The claims, the evidence files (relative to ``base`` where given: a result directory's
        ``fingerprints.json`` names files inside it) and the notes on withdrawn claims."""
        out = {k: self.claims.get(k) for k in FIELDS}
        out["evidence"] = {k: Path(self.paths[k]).relative_to(base).as_posix() if base is not None else self.paths[k]
                           for k in PROPERTIES if k in self.paths}
        if self.notes:
            out["notes"] = dict(self.notes)
        return out


@dataclass
class Fingerprint:
    """A backend's fingerprint: per gradient, :data:`FIELDS` and the evidence."""

    backend: str
    format: str
    geometry: Geometry
    gradients: dict = field(default_factory=dict)  # gradient -> GradientPrint

    def to_dict(self, base: Path | None = None) -> dict:
        return {"backend": self.backend, "format": self.format, "geometry": self.geometry.as_dict(),
                "gradients": {g: gp.to_dict(base) for g, gp in self.gradients.items()}}


class _Prober:
    """Runs one gradient's probes through a backend and keeps each property's evidence."""

    def __init__(self, backend, gradient: str, g: Geometry):
        self.backend, self.fmt = backend, backend.format
        self.ctx = Context(self.fmt, slots_of(gradient, g))
        self.print = GradientPrint()
        self.variants: set | None = None  # the emulation variants that reproduced the claimed order

    @property
    def slots(self) -> Slots:
        return self.ctx.slots

    def observe(self, A: float, rows: list[np.ndarray]) -> tuple[list[Obs], list[Case]]:
        obs, cases = [], []
        S = self.slots.count
        for start in range(0, len(rows), S):
            chunk = rows[start:start + S]
            case = build_case(self.slots, self.fmt, A, chunk)
            res = _results(self.slots, _run(self.backend, case), len(chunk))
            obs += [Obs(A, r, float(v)) for r, v in zip(chunk, res)]
            cases.append(case)
        return obs, cases

    def claim(self, prop: str, A: float, rows: list[np.ndarray], infer) -> Inference:
        """Probe ``rows``, infer, and keep the evidence: the one case, or a case of the decisive
        rows run again (the claim stands only if that case gives it again)."""
        if not rows:
            return NONE
        obs, cases = self.observe(A, rows)
        inf = infer(self.ctx, obs)
        if inf.value is None:
            return inf
        if len(cases) == 1:
            self.print.evidence[prop] = cases[0]
            return inf
        keep = [rows[s] for s in inf.decisive]
        if not keep or len(keep) > self.slots.count:
            return NONE
        again, (case,) = self.observe(A, keep)
        if infer(self.ctx, again).value != inf.value:
            return NONE
        self.print.evidence[prop] = case
        return inf

    def probe(self, prop: str) -> None:
        build, infer = _PROBES[prop]
        A, rows = build(self.ctx)
        self.ctx.claims[prop] = self.claim(prop, A, rows, infer).value

    def probe_order(self) -> None:
        A, rows = _order_probe(self.ctx, self.slots.count)
        inf = self.claim("order", A, rows, _infer_order)
        order, block = inf.value if inf.value is not None else (None, None)
        if order is None and rows:
            order = "unknown"
        self.ctx.claims["order"], self.ctx.claims["block"] = order, block
        if order == "unknown":
            self.print.evidence.pop("order", None)

    def verify_order(self) -> bool:
        """Emulate the claimed order on fresh random folds (:func:`verify_order`); where it does not
        reproduce them, withdraw it (``unknown``, the reason in ``notes``) and return False."""
        if self.ctx.claims.get("order") in (None, "unknown"):
            return True
        self.variants, why = verify_order(self.backend, self.slots, self.fmt, self.ctx.claims)
        if self.variants:
            return True
        self.ctx.claims["order"], self.ctx.claims["block"] = "unknown", None
        self.print.notes["order"] = why
        self.print.evidence.pop("order", None)
        return False

    def check_fma(self) -> None:
        """An ``fma`` claim must agree with the variants that reproduced the order."""
        fma = self.ctx.claims.get("fma")
        if fma is None or not self.variants or self.slots.gradient == "grad_bias":
            return
        if not any(fused == fma for fused, *_ in self.variants):
            self.ctx.claims["fma"] = None
            self.print.evidence.pop("fma", None)
            self.print.notes["fma"] = (f"the probe said {'fused' if fma else 'unfused'}, but only "
                                       f"{'unfused' if fma else 'fused'} products reproduced the claimed order "
                                       "on fresh random folds")

    def probe_scaling(self) -> None:
        case, entries, levels = scaling_case(self.slots.gradient, self.fmt, self.slots.geometry)
        out = _run(self.backend, case)
        res = np.full(len(entries), np.nan) if out is None else out.ravel()[entries]
        value = _infer_scaling(res, levels).value
        self.ctx.claims["error_scaling"] = value
        if value is not None:
            self.print.evidence["error_scaling"] = case

    def probe_determinism(self) -> None:
        g = self.slots.geometry
        t = _base_tensors(self.fmt, g)
        case = Case(t["input"], t["weight"], t["grad_output"], stride=g.stride, padding=g.padding, format=self.fmt,
                    gradients=(self.slots.gradient,))
        runs = [_run(self.backend, case) for _ in range(RUNS)]
        if any(r is None for r in runs):
            value = None
        else:
            value = all(r.tobytes() == runs[0].tobytes() for r in runs[1:])
        self.ctx.claims["deterministic"] = value
        if value is not None:
            self.print.evidence["deterministic"] = case

    def run(self) -> GradientPrint:
        for prop in ("accumulator_bits", "subnormal_outputs"):
            self.probe(prop)
        self.probe_scaling()
        self.probe_determinism()
        self.probe("rounding")
        self.probe_order()
        resting = ("product_bits", "fma", "subnormal_inputs")  # each may rest on the order
        for prop in resting:
            self.probe(prop)
        if not self.verify_order():
            for prop in resting:  # made again without the withdrawn order
                self.print.evidence.pop(prop, None)
                self.probe(prop)
        self.check_fma()
        self.print.claims = {k: self.ctx.claims.get(k) for k in FIELDS}
        return self.print


def fingerprint(backend, geometry: Geometry | None = None, gradients=GRADIENTS) -> Fingerprint:
    """The fingerprint of ``backend`` (a :class:`~difftest.backends.Backend` or a name) at
    ``geometry`` (default :func:`default_geometry`): per gradient, every property of
    :data:`FIELDS` (None where undecidable) and the evidence case of each claim."""
    if isinstance(backend, str):
        from .backends import get_backend

        backend = get_backend(backend)
    g = default_geometry() if geometry is None else plain_only(geometry, "fingerprint")
    fp = Fingerprint(backend.name, backend.format.name, g)
    for grad in gradients:
        fp.gradients[grad] = _Prober(backend, grad, g).run()
    return fp


# --- evidence: files and re-derivations --------------------------------------------------------------

def write(prints: list[Fingerprint], out: str | Path, failed=()) -> Path:
    """Write each claim's evidence case to ``out/<backend>/<gradient>-<property>.npz`` and
    ``out/fingerprints.json`` (the ``--json`` document, evidence paths relative to ``out``;
    ``failed``: ``(backend, reason)`` of backends that crashed or hung while probed)."""
    from .store import FINGERPRINTS, file_name, write_json

    out = Path(out)
    for fp in prints:
        for grad, gp in fp.gradients.items():
            gp.paths = {}
            for prop in PROPERTIES:
                path = out / file_name(fp.backend) / f"{grad}-{prop}.npz"
                if prop in gp.evidence:
                    gp.paths[prop] = str(gp.evidence[prop].save(path))
                elif path.is_file():
                    path.unlink()  # the evidence of an earlier claim this run does not make
    write_json(out / FINGERPRINTS, to_json(prints, out, failed))
    return out / FINGERPRINTS


def to_json(prints: list[Fingerprint], base: Path | None = None, failed=()) -> dict:
    """``{"backends": [...], "failed": [{"backend", "reason"}]}``; evidence paths relative to ``base``
    where given."""
    return {"backends": [fp.to_dict(base) for fp in prints],
            "failed": [{"backend": b, "reason": why} for b, why in failed]}


def derive(prop: str, gradient: str, case: Case, output: np.ndarray, claims: dict | None = None):
    """Re-derive property ``prop`` of ``gradient`` from an evidence case and the backend's
    output on it (for ``deterministic``: a list of outputs), with the gradient's other claims
    as context. Returns the value (``(order, block)`` for ``order``)."""
    fmt = case.format
    if prop == "deterministic":
        return all(np.asarray(o).tobytes() == np.asarray(output[0]).tobytes() for o in output[1:])
    if prop == "error_scaling":
        _, entries, levels = scaling_case(gradient, fmt, case.geometry)
        return _infer_scaling(np.asarray(output).ravel()[entries], levels).value
    slots = slots_of(gradient, case.geometry)
    A, rows = read_rows(slots, case)
    res = np.asarray(output, dtype=np.float64).ravel()[slots.entries]
    obs = [Obs(A, r, float(v)) for r, v in zip(rows, res) if np.any(r)]
    ctx = Context(fmt, slots, dict(claims or {}))
    infer = _infer_order if prop == "order" else _PROBES[prop][1]
    return infer(ctx, obs).value


def rederive(path: str | Path, backend, prop: str, gradient: str, claims: dict | None = None):
    """Load an evidence case, run ``backend`` on it and re-derive ``prop`` (see :func:`derive`). (Not
    "replay": that word is the NF model's, :mod:`difftest.replay`.)"""
    if isinstance(backend, str):
        from .backends import get_backend

        backend = get_backend(backend)
    case = Case.load(path)
    runs = RUNS if prop == "deterministic" else 1
    outs = [_run(backend, case) for _ in range(runs)]
    if any(o is None for o in outs):
        return None
    return derive(prop, gradient, case, outs if prop == "deterministic" else outs[0], claims)


# --- the table -------------------------------------------------------------------------------------

def table(prints: list[Fingerprint]) -> str:
    """A readable table: one row per backend × gradient, one column per property."""
    widths = {"product_bits": 4, "accumulator_bits": 4, "rounding": 11, "fma": 4, "subnormal_inputs": 7,
              "subnormal_outputs": 7, "order": 14, "deterministic": 6, "error_scaling": 11}
    head = (f"{'backend':<24} {'format':<9} {'gradient':<12} " + " ".join(f"{h:<{widths[k]}}" for k, h, _ in COLUMNS)).rstrip()
    lines = [head, "-" * len(head)]
    for fp in prints:
        for grad, gp in fp.gradients.items():
            lines.append(f"{fp.backend:<24} {fp.format:<9} {grad:<12} "
                         + " ".join(f"{cell(gp.claims, k):<{widths[k]}}" for k, _, _ in COLUMNS).rstrip())
    g = prints[0].geometry if prints else None
    if g is not None:
        lines.append("")
        lines.append(f"geometry: input {g.input_shape}, weight {g.weight_shape}, stride {g.stride}, padding {g.padding}")
    lines.append("prod/acc: significand bits of the inputs as multiplied / of the running sum; sub_in/sub_out: "
                 "subnormal inputs/results kept or flushed; determ: bitwise equal over 3 runs; "
                 "? = the probes cannot decide")
    return "\n".join(lines)


def fingerprint_all(backends: list, geometry=None, out=None, say=None) -> tuple[list, list]:
    """Fingerprint each backend at ``geometry`` (default :func:`default_geometry`) and write them
    into ``out`` (:func:`write`); a backend that crashes or hangs while probed (in its worker,
    :mod:`difftest.isolation`) is left out, with the reason. ``say(text)`` hears each backend.
    Returns the fingerprints and the failures ``(name, why)``."""
    import sys

    prints, failed = [], []
    g = geometry if geometry is not None else default_geometry()
    for b in backends:
        if say is not None:
            say(f"fingerprinting {b.name} at input {g.input_shape}, weight {g.weight_shape}, {g.text()}")
        try:
            prints.append(fingerprint(b, g))
        except (BackendCrashed, BackendTimedOut) as exc:
            failed.append((b.name, str(exc)))
            print(f"difftest: {b.name} was not fingerprinted: {exc} while probed", file=sys.stderr)
    if out is not None:
        write(prints, out, failed)
    return prints, failed
