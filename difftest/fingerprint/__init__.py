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

from .slots import (FIELDS, ORDER_PAIRS, PROPERTIES, RUNS, SEED, VERIFY_CASES, VERIFY_SLOTS, Slots, build_case,
                    default_geometry, layer_geometry, parse_geometry, plain_only, read_rows, slots_of)
from .orders import Order, emulate, order_candidates, predict, round_bits, rounder, verify_order
from .probe import Fingerprint, GradientPrint, fingerprint
from .evidence import derive, rederive, to_json, write
from .table import fingerprint_all, table

from .orders import _order_rows, _order_scale  # noqa: F401 - the tests' probes of the order machinery
from .slots import _run  # noqa: F401 - the tests run a backend as the fingerprint does

__all__ = ["FIELDS", "ORDER_PAIRS", "PROPERTIES", "RUNS", "SEED", "VERIFY_CASES", "VERIFY_SLOTS", "Fingerprint",
           "GradientPrint", "Order", "Slots", "build_case", "default_geometry", "derive", "emulate", "fingerprint",
           "fingerprint_all", "layer_geometry", "order_candidates", "parse_geometry", "plain_only", "predict",
           "read_rows", "rederive", "round_bits", "rounder", "slots_of", "table", "to_json", "verify_order", "write"]

