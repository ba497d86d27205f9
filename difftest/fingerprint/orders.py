"""Evaluation orders: the candidate orders of a fold, their simulation with exact rationals rounded
to ``W`` bits, the pairs that split the candidates, and the verification of a claimed order on
fresh random cases."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..values.formats import Format
from ..values.geometry import Geometry
from .slots import ORDER_PAIRS, SEED, Slots, VERIFY_CASES, VERIFY_SLOTS, _eq, _results, _run, build_case


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


