"""Which entries a sampled check judges (``--sample N``): chosen to find what lives at real shapes.

A verdict is per entry: an entry's exact value, NF value and both bounds depend on its own terms
only, so judging a chosen set of entries is sound for those entries (a violation among them is
certain) and costs their terms alone. The backend still computes its whole gradients, as users
run it; :func:`choose` says which of their entries are judged.

How many. At most ``N`` entries per gradient, and at most ``N ·`` :data:`TERMS_PER_ENTRY` terms:
an entry that sums more terms counts as several (a weight-gradient entry sums ``N·oh·ow`` terms,
921,600 at 1280 × 720, so far fewer of them are judged than of the input gradient's, whose
entries sum ``O/G·kH·kW``). Where ``N`` covers a whole gradient, every entry is judged.

Which, in this order, each stratum taking up to its share (:data:`SHARES`) of the entries and
leaving what it does not use to the next; deterministic from the seed:

* ``corners`` — the four corners of every plane (the last two axes: an image channel, a kernel
  tap grid) and the ends of a vector;
* ``edges`` — the first and last row and column of every plane;
* ``tiles`` — both sides of every tile boundary: rows, columns and flat indices ``t - 1`` and
  ``t`` for ``t`` a multiple of ``2^k``, ``k >= 3``, the largest ``k`` first (where a kernel's
  tiles, index arithmetic past ``2^31`` or a 1024-row edge would break);
* ``probes`` — the entries whose folds read a planted probe (:mod:`difftest.probes`), found
  where the inputs carry one: a batch entry whose output gradient is one constant (``grad_input``
  entries of that batch entry), an output channel whose output gradient is one constant
  (``grad_weight`` entries of that channel);
* ``random`` — the rest, uniformly.

Within a stratum with more candidates than its share, the entries are drawn uniformly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import DifftestError
from ..values.geometry import GRADIENTS, Geometry

#: The strata, in the order they are filled.
STRATA = ("corners", "edges", "tiles", "probes", "random")
#: The share of a gradient's judged entries each stratum may take (what one leaves goes on).
SHARES = {"corners": 0.1, "edges": 0.3, "tiles": 0.3, "probes": 0.1, "random": 1.0}
#: The judged terms per gradient are at most ``N ·`` this (the cost of ``N`` entries of 4096 terms).
TERMS_PER_ENTRY = 4096
#: The sample a too-large full check suggests, and ``difftest model`` takes for its too-large layers.
DEFAULT_SIZE = 4096
#: Tile boundaries are multiples of ``2^k`` from this ``k`` on.
TILE_LOG2 = 3


def terms_per_entry(name: str, g: Geometry) -> int:
    """The most terms one entry of gradient ``name`` sums (the spec's steps that can be non-zero)."""
    if name == "grad_input":
        return g.Og * g.kH * g.kW
    return g.N * g.out_h * g.out_w


@dataclass(frozen=True)
class GradientSample:
    """The judged entries of one gradient: flat indices (C order, ascending) of its shape."""

    index: np.ndarray = field(repr=False)
    total: int
    strata: dict  # stratum -> entries judged from it
    terms: int  # the most terms one entry sums
    by_cost: bool  # fewer than N: the term budget, not the count, set how many
    size: int = 0  # the sample's N
    seed: int = 0

    @property
    def judged(self) -> int:
        return int(self.index.size)

    @property
    def whole(self) -> bool:
        return self.judged == self.total

    def as_dict(self) -> dict:
        """What a result records of it (``GradientResult.sampled``)."""
        return {"judged": self.judged, "total": self.total, "strata": dict(self.strata), "by_cost": self.by_cost,
                "terms": self.terms, "size": self.size, "seed": self.seed}

    def describe(self, name: str) -> str:
        return sample_text(name, self.as_dict())


def sample_text(name: str, sampled: dict) -> str:
    """A gradient's sample in words, from what a result records (``GradientResult.sampled``):
    judged of total, why not more, and how many of each stratum."""
    text = f"{name}: {sampled['judged']:,} of {sampled['total']:,} entries judged"
    if sampled.get("by_cost"):
        each = f"each sums {sampled['terms']:,} terms: " if sampled.get("terms") else ""
        text += f" ({each}the term budget, N x {TERMS_PER_ENTRY}, not the count, sets how many)"
    strata = sampled.get("strata", {})
    kinds = ", ".join(f"{strata[s]:,} {s}" for s in STRATA if strata.get(s))
    return f"{text}; {kinds}" if kinds else text


@dataclass(frozen=True)
class Sample:
    """The judged entries of each requested gradient of one case."""

    size: int
    seed: int
    gradients: dict  # gradient -> GradientSample

    def __getitem__(self, name: str) -> GradientSample:
        return self.gradients[name]


def check_size(n) -> int:
    """``--sample N``: a whole number of entries, at least 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DifftestError(f"--sample takes a whole number of entries >= 1, got {n!r}")
    return int(n)


def judged_count(name: str, g: Geometry, n: int) -> tuple[int, bool]:
    """How many entries of ``name`` a sample of size ``n`` judges, and whether cost set it."""
    total = int(np.prod(g.shape_of(name)))
    by_cost = max(1, (n * TERMS_PER_ENTRY) // max(1, terms_per_entry(name, g)))
    count = min(total, n, by_cost)
    return count, by_cost < min(total, n)


def judged_terms(g: Geometry, n: int, gradients=GRADIENTS) -> int | None:
    """The terms a sample of size ``n`` judges over ``gradients`` (arithmetic on the counts: nothing
    is chosen), or None where it covers every entry of them (the full check runs then)."""
    counts = {name: judged_count(name, g, n)[0] for name in gradients}
    if all(counts[name] == int(np.prod(g.shape_of(name))) for name in gradients):
        return None
    return sum(counts[name] * terms_per_entry(name, g) for name in gradients)


def choose(g: Geometry, gradients=GRADIENTS, n: int = 4096, seed: int = 0, grad_output: np.ndarray | None = None) -> Sample:
    """The entries of each of ``gradients`` a sample of size ``n`` judges (see the module
    docstring); ``grad_output``, when given, is searched for planted probes."""
    n = check_size(n)
    out = {}
    for k, name in enumerate(GRADIENTS):
        if name not in gradients:
            continue
        shape = g.shape_of(name)
        total = int(np.prod(shape))
        count, by_cost = judged_count(name, g, n)
        if count == total:
            out[name] = GradientSample(np.arange(total, dtype=np.int64), total, {"all": total},
                                       terms_per_entry(name, g), False, n, seed)
            continue
        rng = np.random.default_rng([seed, k])
        chosen = _Chosen()
        strata = {}
        for stratum in STRATA:
            room = count - chosen.size if stratum == "random" else min(count - chosen.size,
                                                                       math.ceil(SHARES[stratum] * count))
            if room <= 0:
                strata[stratum] = 0
                continue
            strata[stratum] = chosen.add(_candidates(stratum, name, shape, room, rng, g, grad_output, chosen), room)
        out[name] = GradientSample(chosen.index(), total, strata, terms_per_entry(name, g), by_cost, n, seed)
    return Sample(n, seed, out)


class _Chosen:
    """Flat indices chosen so far, in the order chosen, without repeats."""

    def __init__(self):
        self.seen: set[int] = set()
        self.order: list[int] = []

    @property
    def size(self) -> int:
        return len(self.order)

    def add(self, candidates, room: int) -> int:
        added = 0
        for flat in candidates:
            if added == room:
                break
            flat = int(flat)
            if flat not in self.seen:
                self.seen.add(flat)
                self.order.append(flat)
                added += 1
        return added

    def index(self) -> np.ndarray:
        return np.array(sorted(self.order), dtype=np.int64)


def _draws(rng: np.random.Generator, room: int, total: int, make):
    """Up to ``4·room + 16`` candidates from ``make(rng, count)`` (flat index arrays), in batches."""
    drawn = 0
    while drawn < 4 * room + 16:
        batch = min(4 * room + 16 - drawn, max(64, room))
        yield from make(rng, batch)
        drawn += batch


def _candidates(stratum: str, name: str, shape: tuple, room: int, rng: np.random.Generator, g: Geometry,
                grad_output, chosen: _Chosen):
    total = int(np.prod(shape))
    if stratum == "random":
        return _random(rng, total, room, chosen)
    if stratum == "probes":
        return _probes(name, shape, room, rng, g, grad_output)
    if len(shape) < 2:  # a vector: its ends are its corners and edges
        return [0, total - 1] if stratum in ("corners", "edges") else _tiles(shape, room, rng)
    *lead, P, Q = shape
    planes = int(np.prod(lead))
    if stratum == "corners":
        rows = np.array([0, 0, P - 1, P - 1])
        cols = np.array([0, Q - 1, 0, Q - 1])
        if planes * 4 <= 4 * room:
            return (np.arange(planes)[:, None] * P * Q + rows * Q + cols).ravel()
        return _draws(rng, room, total, lambda r, m: (r.integers(0, planes, m) * P * Q
                                                      + (lambda c: rows[c] * Q + cols[c])(r.integers(0, 4, m))))
    if stratum == "edges":
        def edge(r, m):
            plane = r.integers(0, planes, m)
            side = r.integers(0, 4, m)  # first row, last row, first column, last column
            along = np.where(side < 2, r.integers(0, Q, m), r.integers(0, P, m))
            row = np.where(side == 0, 0, np.where(side == 1, P - 1, along))
            col = np.where(side == 2, 0, np.where(side == 3, Q - 1, along))
            return plane * P * Q + np.where(side < 2, row * Q + along, along * Q + col)
        return _draws(rng, room, total, edge)
    return _tiles(shape, room, rng)


def _boundaries(length: int):
    """Positions ``t - 1`` and ``t`` of every multiple ``t`` of ``2^k`` (``k >= TILE_LOG2``)
    inside ``[0, length)``, the largest ``k`` first, each once (lazily: a flat index has millions)."""
    for k in range(length.bit_length() - 1, TILE_LOG2 - 1, -1):
        step = 1 << k
        for t in range(step, length + 1, 2 * step):  # odd multiples: the even ones came with a larger k
            yield t - 1
            if t < length:
                yield t


def _tiles(shape: tuple, room: int, rng: np.random.Generator):
    """Entries on tile boundaries of the rows, the columns and the flat index, in turn, largest
    tiles first; each boundary row (column) gets a few entries at random columns (rows) and planes."""
    if len(shape) < 2:
        yield from _boundaries(int(shape[0]))
        return
    *lead, P, Q = shape
    planes = int(np.prod(lead))
    lines = 2 * (P >> TILE_LOG2) + 2 * (Q >> TILE_LOG2) + 1
    per_line = max(1, room // lines)
    rows, cols, flat = _boundaries(P), _boundaries(Q), _boundaries(planes * P * Q)
    while True:
        row, col, f = next(rows, None), next(cols, None), next(flat, None)
        if row is None and col is None and f is None:
            return
        if row is not None:
            yield from rng.integers(0, planes, per_line) * P * Q + row * Q + rng.integers(0, Q, per_line)
        if col is not None:
            yield from rng.integers(0, planes, per_line) * P * Q + rng.integers(0, P, per_line) * Q + col
        if f is not None:
            yield f


def _random(rng: np.random.Generator, total: int, room: int, chosen: _Chosen):
    """Uniform entries not chosen yet: drawn with repeats (a large gradient), or from the
    entries left (a small one)."""
    if total <= 4 * (room + chosen.size) + 1024:
        left = np.setdiff1d(np.arange(total, dtype=np.int64), np.fromiter(chosen.seen, np.int64, len(chosen.seen)))
        return rng.permutation(left)
    return _endless(rng, total)


def _endless(rng: np.random.Generator, total: int):
    while True:
        yield from rng.integers(0, total, 4096)


def _probes(name: str, shape: tuple, room: int, rng: np.random.Generator, g: Geometry, grad_output):
    """Entries of the folds a planted probe is in (see the module docstring)."""
    if grad_output is None or name == "grad_bias":
        return []
    d = np.asarray(grad_output)
    axis = 0 if name == "grad_input" else 1  # δ[n] constant: grad_input[n]; δ[:, o] constant: grad_weight[o]
    slices = np.moveaxis(d, axis, 0).reshape(d.shape[axis], -1)
    constant = np.flatnonzero((slices[:, 0] != 0) & (slices == slices[:, :1]).all(axis=1))
    if constant.size == 0:
        return []
    per = int(np.prod(shape[1:]))
    return _draws(rng, room, constant.size * per,
                  lambda r, m: constant[r.integers(0, constant.size, m)] * per + r.integers(0, per, m))
