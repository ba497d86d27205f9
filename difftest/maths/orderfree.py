r"""The order-free bound: sound for every evaluation order, with or without FMA.

Setting. An entry is ``S = Σ_k a_k·b_k`` over the structural positions of its sum (padded
reads and non-matching input-gradient steps are exact zeros in spec and runtime and are left
out), computed from runtime values by any summation tree in which every operation (product,
sum, or fused multiply-add) is correctly rounded to nearest in a format of precision ``p``,
radix β, minimal exponent ``emin``. Let ``u = β^(1-p)/2``, ``η = β^emin/2`` (0 for FLX) and
``n`` the number of non-zero runtime products.

Rounding (Higham, *Accuracy and Stability*, §3.1, with underflow). Rounded values are
multiples of ``β^emin``, so a rounded sum ``x ⊕ y`` of two of them is exact in the subnormal
range and otherwise ``(x + y)(1 + δ)`` with ``|δ| <= u``; a rounded product or FMA result
``RN(z)`` is ``z(1 + δ)`` or, in the subnormal range, ``z + η'`` with ``|η'| <= η``.

The tree. Zero products drop out exactly: ``RN(0) = 0``, adding an exact zero returns the
other (representable) operand, and an FMA ``x·y + c`` with ``x·y = 0`` returns ``c``. What is
left is a binary tree over the ``n`` non-zero products with ``n - 1`` internal nodes (sums and
FMAs); each product is either rounded alone (a leaf rounding) or fused into the FMA node that
consumes it. A leaf-to-root path visits at most ``n - 1`` internal nodes plus at most one leaf
rounding: at most ``n`` factors ``(1 + δ)`` multiply a product. Each product brings exactly one
``η'`` (its leaf rounding, or its FMA node), above which lie at most ``n - 1`` nodes. Unrolled,

    computed = Σ_k a_k b_k Π_{j ∈ P_k} (1 + δ_j) + Σ_ν η'_ν Π_{j above ν} (1 + δ_j),

with ``|P_k| <= n`` and at most ``n`` terms ``η'_ν``, each under at most ``n - 1`` factors. For
``|δ_j| <= u``, ``(1 - u)^k <= Π_{j<=k} (1 + δ_j) <= (1 + u)^k`` and ``1 - (1 - u)^k <=
(1 + u)^k - 1`` (``(1 + u)^k + (1 - u)^k >= 2``: the odd binomial terms cancel), so
``|Π_{j<=k} (1 + δ_j) - 1| <= (1 + u)^k - 1``, which grows with ``k``. Hence, for every ``n``,

    |computed - Σ a_k b_k| <= ((1 + u)^n - 1)·Σ|a_k b_k| + n·(1 + u)^(n-1)·η,

never above Higham's ``γ_n·Σ|a b| + n·(1 + γ_n)·η`` (``(1 + u)^n <= 1/(1 - n·u)`` where
``n·u < 1``) and finite where ``γ_n`` is not (``n·u >= 1``: binary16 from 2048 terms).

The eps hypotheses ``|a_R - a_S| <= e_a``, ``|b_R - b_S| <= e_b`` add, per structural position,
``|a_R b_R - a_S b_S| <= (|a_R| + e_a)·e_b + (|b_R| + e_b)·e_a`` (the ``mulEps`` cross terms):

    bound = ((1+u)^n - 1)·Σ|a b| + n·(1+u)^(n-1)·η + e_b·Σ|a| + e_a·Σ|b| + 2·e_a·e_b·m

with ``m`` the number of structural positions. For the bias (sums of δ only: exact leaves, at
most ``n - 1`` sums on a path, no ``η``): ``((1+u)^(n-1) - 1)·Σ|δ| + m·epsδ``.

Computation. Counts are exact GEMMs of 0/1 matrices. ``Σ|a b|`` comes from a float64 GEMM
``c`` of absolute values (:func:`difftest.layouts.gradient_product`: the input gradient tap by
tap, each partial sum added in float64 — another order of the same ``K`` terms), inflated to a
sure upper bound: any float64 evaluation of a sum of ``K`` products satisfies
``c >= S(1 - γ_K) - K·2^-1075``, so ``S <= (c + K·2^-1074)·(1 + K·2^-52)`` for
``K·2^-53 <= 1/4``. ``(1 + u)^k - 1`` is raised by squaring on its excess over 1,
``(1 + a)(1 + b) - 1 = a + b + a·b``, from the exact ``u``: no ``1 + u`` is ever rounded, and it
stays accurate for the ``u = 2^-53`` of binary64. This and every other operation is rounded
upward (+inf only where ``(1 + u)^k`` passes the float64 range).

binary64's ``η = 2^-1075`` is not a float64: rounded up to ``2^-1074`` it would double the term
``n·(1 + u)^(n-1)·η``, so that a backend ``n/2`` quanta of ``2^-1074`` beyond the bound in every
order went unseen (64 products of ``2^-1074·2^-1074``: bound 66·2^-1074 where the true one is
32.0…·2^-1074). The term is computed as ``t = n·(1 + u)^(n-1)·2^(emin)`` rounded up (``2^emin``
is a float64 for every format here) and then halved upward (:func:`times_eta_up`): ``t/2`` is
exact where ``t`` is normal, else rounded up to the next multiple of ``2^-1074``, so the term is
at most one quantum above its exact value (33·2^-1074 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..values.case import RuntimeInputs
from ..values.formats import Format
from ..values.fparith import add_up, mul_up
from ..values.geometry import GRADIENTS, Geometry
from .layouts import entry_operand, entry_product, gemm_shape, gradient_operand, gradient_product


@dataclass(frozen=True)
class OrderFree:
    """Order-free bound of one gradient, with the ingredients a report may want."""

    bound: np.ndarray
    abs_sum: np.ndarray  # upper bound of Σ|a·b| (or Σ|δ|) per entry
    terms: np.ndarray  # n: non-zero runtime products per entry


def abs_gemm_up(a: np.ndarray, b: np.ndarray, product=np.matmul, k: int | None = None) -> np.ndarray:
    """A sure upper bound of ``|a| @ |b|`` from one float64 evaluation (see module docstring):
    ``product`` a bilinear map summing at most ``k`` products per entry (default: the GEMM of
    ``a`` and ``b``, ``k`` their inner dimension), evaluated in float64 in any order."""
    k = a.shape[-1] if k is None else k
    return sum_up(product(np.abs(a), None if b is None else np.abs(b)), k)


def sum_up(c: np.ndarray, k: int) -> np.ndarray:
    """A sure upper bound of sums of at most ``k`` non-negative products each, from ``c``, one
    float64 evaluation of them in any order (see the module docstring)."""
    if k * 2.0**-53 > 0.25:
        raise ValueError(f"inner dimension {k} too large for the float64 inflation")
    c = add_up(c, np.float64(k) * 2.0**-1074)
    return mul_up(c, np.float64(1.0 + k * 2.0**-52))


def count_gemm(a: np.ndarray, b: np.ndarray, product=np.matmul) -> np.ndarray:
    """Exact counts ``Σ_k [a_k != 0][b_k != 0]`` (integers below 2^53)."""
    return product((a != 0).astype(np.float64), (b != 0).astype(np.float64))


def count_products(name: str, a: np.ndarray, b: np.ndarray, g: Geometry, k: int) -> np.ndarray:
    """:func:`count_gemm` of gradient ``name`` (``b`` the compact tensor): where neither operand
    has a zero, every structural position is a non-zero product and the count is
    :func:`structural_count` (padded reads are zeros of the layout, not of ``b``), with no GEMM;
    otherwise in float32 where every count stays below ``2^24`` (``k`` terms per entry at most:
    every partial sum is an integer float32 holds exactly, in any order), at twice float64's
    speed, in float64 beyond."""
    if a.all() and b.all():
        return structural_count(name, g)
    dtype = np.float32 if k < 2**24 else np.float64
    mask_b = gradient_operand(name, (b != 0).astype(dtype), g)
    return gradient_product(name, (a != 0).astype(dtype), mask_b, g).astype(np.float64)


def growth_up(fmt: Format, k: np.ndarray) -> np.ndarray:
    """A sure upper bound of ``(1 + u)^k - 1`` for each integer ``k >= 0`` (see module docstring)."""
    k = np.asarray(k, dtype=np.float64)
    top = float(np.max(k, initial=0.0))
    if top <= max(1024.0, 4.0 * k.size):  # counts are small integers: a table of 0..top, gathered
        return _growth_table(fmt, np.arange(int(top) + 1))[k.astype(np.int64)]
    ks, inverse = np.unique(k, return_inverse=True)
    return _growth_table(fmt, ks)[inverse.ravel()].reshape(np.shape(k))


def _growth_table(fmt: Format, ks: np.ndarray) -> np.ndarray:
    """``(1 + u)^k - 1`` rounded up for each integer ``k`` of ``ks``."""
    rest = np.array(ks, dtype=np.int64)  # consumed bit by bit
    out = np.zeros(rest.shape)  # (1 + u)^0 - 1
    power = np.full(rest.shape, float(fmt.unit_roundoff))  # (1 + u)^(2^i) - 1, i = 0: u exact (a power of two)
    with np.errstate(over="ignore", invalid="ignore"):  # past float64's range: +inf, still an upper bound
        while rest.any():
            out = np.where(rest % 2 == 1, _compose_up(out, power), out)
            power = _compose_up(power, power)
            rest >>= 1
    return out


def _compose_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(1 + a)(1 + b) - 1 = a + b + a·b`` rounded upward, for ``a, b >= 0``."""
    return add_up(add_up(a, b), mul_up(a, b))


def halve_up(v: np.ndarray) -> np.ndarray:
    """``v / 2`` rounded up, for ``v >= 0`` (exact but where ``v/2`` falls between subnormals)."""
    h = np.asarray(v, dtype=np.float64) * 0.5
    return np.where(h * 2.0 < v, np.nextafter(h, np.inf), h)  # h·2 is exact: no overflow below v


def times_eta_up(fmt: Format, x: np.ndarray) -> np.ndarray:
    """``x·η`` (``η = β^emin / 2``) rounded up, for ``x >= 0``; 0 for a format without ``emin``."""
    if fmt.emin is None:
        return np.zeros(np.shape(x))
    return halve_up(mul_up(np.asarray(x, dtype=np.float64), np.float64(np.ldexp(1.0, fmt.emin))))


def product_bound(
    fmt: Format, a: np.ndarray, b: np.ndarray, ma: np.ndarray | None, mb: np.ndarray | None, e_a: float, e_b: float,
    product=np.matmul, k: int | None = None, structural=None, count=None,
) -> OrderFree:
    """Order-free bound of ``product(a, b)`` (runtime values; default ``a @ b``) with structural
    masks ``ma``, ``mb`` (``product`` and ``k`` as in :func:`abs_gemm_up`; unused, may be None, with
    ``structural``). ``structural``, when
    given, computes the eps terms' ``(Σ|a|, Σ|b|, m)`` over the structural positions another way
    (:func:`structural_sums`: the same sums, without a GEMM each); ``count`` the counts ``n``
    (:func:`count_gemm` with ``product`` by default)."""
    n = count_gemm(a, b, product) if count is None else count(a, b)
    s, bound = _finish(fmt, product(np.abs(a), None if b is None else np.abs(b)), n, a.shape[-1] if k is None else k)
    if e_a or e_b:
        if structural is None:
            m = count_gemm(ma, mb, product)
            sa = abs_gemm_up(a, mb, product, k)  # Σ|a| over structural positions (a is 0 off them)
            sb = abs_gemm_up(ma, b, product, k)
        else:
            sa, sb, m = structural()
        bound = _plus_eps_terms(bound, sa, sb, m, e_a, e_b)
    return OrderFree(bound=bound, abs_sum=s, terms=n)


def _plus_eps_terms(bound: np.ndarray, sa, sb, m, e_a: float, e_b: float) -> np.ndarray:
    """``bound + (Σ|a|·e_b + Σ|b|·e_a + m·2·e_a·e_b)`` (the eps terms), every operation rounded up:
    one compiled pass (:func:`difftest.kernels.plus_eps_terms`) over the operands broadcast to the
    bound's shape."""
    from .kernels import plus_eps_terms

    shape = np.shape(bound)
    flat = lambda v: np.ascontiguousarray(np.broadcast_to(v, shape), dtype=np.float64).ravel()  # noqa: E731
    out = np.empty(int(np.prod(shape)))
    plus_eps_terms(flat(bound), flat(sa), flat(sb), flat(m), float(e_a), float(e_b),
                   float(mul_up(np.float64(2 * e_a), np.float64(e_b))), out)
    return out.reshape(shape)


def _finish(fmt: Format, c: np.ndarray, n: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``s = sum_up(c, k)`` (the sure ``Σ|a·b|``) and ``((1+u)^n - 1)·s + n·(1+u)^(n-1)·η``, every
    operation rounded up: one compiled pass (:func:`difftest.kernels.order_free_bound`) where the
    counts are small enough for a table of ``(1+u)^j - 1``, these ufuncs otherwise."""
    top = float(np.max(n, initial=0.0))
    if top > max(1024.0, 4.0 * n.size) or k * 2.0**-53 > 0.25:
        return _finish_ufuncs(fmt, c, n, k)
    return _finish_compiled(fmt, c, n, k)


def _finish_compiled(fmt: Format, c: np.ndarray, n: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_finish` in one compiled pass, with a table of ``(1+u)^j - 1`` up to the largest count."""
    from .kernels import order_free_bound

    top = float(np.max(n, initial=0.0))
    flat = lambda v: np.ascontiguousarray(v, dtype=np.float64).ravel()  # noqa: E731
    s, bound = np.empty(c.size), np.empty(c.size)
    eta = 0.0 if fmt.emin is None else float(np.ldexp(1.0, fmt.emin))
    order_free_bound(flat(c), flat(n), _growth_table(fmt, np.arange(int(top) + 1)), np.float64(k) * 2.0**-1074,
                     np.float64(1.0 + k * 2.0**-52), eta, s, bound)
    return s.reshape(np.shape(c)), bound.reshape(np.shape(c))


def _finish_ufuncs(fmt: Format, c: np.ndarray, n: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_finish` an operation at a time (any counts)."""
    s = sum_up(c, k)
    below = add_up(1.0, growth_up(fmt, np.maximum(n - 1, 0)))  # (1 + u)^(n-1), above each η'
    with np.errstate(invalid="ignore"):
        bound = add_up(mul_up(growth_up(fmt, n), s), times_eta_up(fmt, mul_up(n, below)))
    return s, np.where(np.isnan(bound), np.inf, bound)


def structural_sums(name: str, a: np.ndarray, b: np.ndarray, g: Geometry, k: int, laid_out: np.ndarray | None = None):
    """``(Σ|a|, Σ|b|, m)`` of gradient ``name`` over each entry's structural positions, as
    :func:`product_bound` computes them from full-size GEMMs with a mask of ones — the same sums,
    in another float64 order, inflated the same way (:func:`abs_gemm_up`) — without those GEMMs:
    a mask of ones makes one of the two operands constant along a dimension, so each sum is one
    smaller product broadcast along it.

    * ``grad_weight[o, c, di, dj]``: ``Σ|δ[o, k]|`` over the positions tap ``(di, dj)`` reads
      (the same for every input channel ``c``), ``Σ|x̃|`` over tap ``(di, dj)`` of channel ``c``
      (the same for every output channel of the group), ``m`` the positions tap ``(di, dj)`` reads;
    * ``grad_input[n, c, h, w]``: ``Σ|δ|`` over the group's output channels and the taps that
      reach ``(h, w)`` (the same for every channel of the group), ``Σ|w[o, c, di, dj]|`` over the
      group's ``o`` and those taps, ``m`` their count.

    ``laid_out``: ``b`` as :func:`~difftest.layouts.gradient_operand` lays it out, where the caller
    has it (the weight gradient's im2col).
    """
    import dataclasses

    from .layouts import _batched_im2col, grouped_rows, im2col, input_taps

    G, Og, Cg = g.groups, g.Og, g.Cg
    if name == "grad_weight":
        taps = im2col(np.ones((g.N, 1, g.H, g.W)), g)  # (K, kH·kW): 1 where tap (di, dj) reads the image
        per_tap = abs_gemm_up(grouped_rows(a, g), taps, np.matmul, k)  # (G, Og, kH·kW)
        sa = np.broadcast_to(per_tap[:, :, None, :], (G, Og, Cg, g.kH * g.kW)).reshape(g.weight_shape)
        cols = _batched_im2col(b, g) if laid_out is None else laid_out  # (G, K, Cg·kH·kW)
        col = sum_up(np.abs(cols).sum(axis=1), k)  # (G, Cg·kH·kW): the same for every o of the group
        sb = np.broadcast_to(col[:, None, :], (G, Og, col.shape[-1])).reshape(g.weight_shape)
        return sa, sb, structural_count(name, g, taps)
    one = dataclasses.replace(g, C=G)  # one input channel per group: the sums do not depend on c within it
    sa_g = abs_gemm_up(a, np.ones((g.O, 1, g.kH, g.kW)), lambda p, q: gradient_product("grad_input", p, q, one), k)
    sa = np.broadcast_to(sa_g[:, :, None], (g.N, G, Cg, g.H, g.W)).reshape(g.input_shape)
    wg = np.abs(b).reshape(G, Og, Cg, g.kH, g.kW)
    sb_raw = np.zeros((G, Cg, g.H, g.W))
    for di, dj, (_, hs), (_, ws) in input_taps(g):
        sb_raw[:, :, hs, ws] += wg[:, :, :, di, dj].sum(axis=1)[:, :, None, None]  # Σ_o |w|: each o once
    sb = np.broadcast_to(sum_up(sb_raw, k)[None], (g.N, G, Cg, g.H, g.W)).reshape(g.input_shape)
    return sa, sb, structural_count(name, g)


def structural_count(name: str, g: Geometry, taps: np.ndarray | None = None) -> np.ndarray:
    """``m``, the structural positions of each entry of gradient ``name`` (its steps less the
    padded reads and non-matching input-gradient steps), in the gradient's shape (a broadcast):
    the positions tap ``(di, dj)`` reads for ``grad_weight[o, c, di, dj]``, the group's output
    channels times the taps that reach ``(h, w)`` for ``grad_input[n, c, h, w]``. ``taps``: the
    weight gradient's im2col of ones, where the caller has it."""
    from .layouts import im2col, input_taps

    if name == "grad_weight":
        taps = im2col(np.ones((g.N, 1, g.H, g.W)), g) if taps is None else taps
        return np.broadcast_to(taps.sum(axis=0), (g.O, g.Cg, g.kH * g.kW)).reshape(g.weight_shape)
    m_raw = np.zeros((g.H, g.W))
    for _, _, (_, hs), (_, ws) in input_taps(g):
        m_raw[hs, ws] += g.Og
    return np.broadcast_to(m_raw, g.input_shape)


def order_free_bounds(rt: RuntimeInputs, g: Geometry, gradients=GRADIENTS, sample=None) -> dict[str, OrderFree]:
    """Order-free bounds of ``gradients`` (default all three) for the runtime values ``rt``;
    each is computed alone, so a subset equals the full computation's. The sums come from
    :func:`~difftest.layouts.gradient_product` on the compact tensors (the spec's terms, any
    float64 order); with a ``sample`` (:class:`difftest.sampling.Sample`), of its entries only
    (:func:`~difftest.layouts.entry_product`: the same terms, another float64 order), as 1-D
    arrays in the order of its indices."""
    fmt = rt.format
    out: dict[str, OrderFree] = {}
    for name in gradients:
        index = None if sample is None else sample[name].index
        if name == "grad_bias" and index is None:
            out[name] = _bias_bound(fmt, rt.grad_output, rt.eps_grad_output, g)
            continue
        if name == "grad_bias":
            out[name] = _bias_bound(fmt, rt.grad_output[:, index], rt.eps_grad_output, g)
            continue
        b, e_b = (rt.weight, rt.eps_weight) if name == "grad_input" else (rt.input, rt.eps_input)
        # laid out once (the weight gradient's im2col or padded input); |·| and != 0 commute with it
        if index is None:  # the eps terms' sums come from structural_sums: no masks to lay out
            b, ma, mb = gradient_operand(name, b, g), None, None
            product = lambda p, q, name=name: gradient_product(name, p, q, g)  # noqa: E731
        else:
            b, ma, mb = entry_operand(name, b, g), np.ones(rt.grad_output.shape), entry_operand(name, np.ones(b.shape), g)
            product = lambda p, q, name=name, index=index: entry_product(name, p, q, g, index)  # noqa: E731
        k = gemm_shape(name, g)[2]
        raw = rt.weight if name == "grad_input" else rt.input
        structural = count = None
        if index is None:
            structural = lambda name=name, raw=raw, k=k, b=b: structural_sums(name, rt.grad_output, raw, g, k, b)  # noqa: E731
            count = lambda p, q, name=name, raw=raw, k=k: count_products(name, p, raw, g, k)  # noqa: E731
        out[name] = product_bound(fmt, rt.grad_output, b, ma, mb, rt.eps_grad_output, e_b, product, k, structural, count)
    return out


def _bias_bound(fmt: Format, d: np.ndarray, eps: float, g: Geometry) -> OrderFree:
    """``((1+u)^(n-1) - 1)·Σ|δ| + m·epsδ`` per output channel of ``d`` (all of them, or the
    chosen ones of a sample), ``m = N·oh·ow``."""
    m = g.N * g.out_h * g.out_w
    s = abs_gemm_up(d, None, lambda p, q: gradient_product("grad_bias", p, q, g), m)
    n = np.count_nonzero(d, axis=(0, 2, 3)).astype(np.float64)
    bias = mul_up(growth_up(fmt, np.maximum(n - 1, 0)), s)
    if eps:
        bias = add_up(bias, mul_up(np.float64(m), np.float64(eps)))
    return OrderFree(bound=bias, abs_sum=s, terms=n)
