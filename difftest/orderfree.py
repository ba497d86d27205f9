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
``c`` of absolute values, inflated to a sure upper bound: any float64 evaluation satisfies
``c >= S(1 - γ_K) - K·2^-1075``, so ``S <= (c + K·2^-1074)·(1 + K·2^-52)`` for
``K·2^-53 <= 1/4``. ``(1 + u)^k - 1`` is raised by squaring on its excess over 1,
``(1 + a)(1 + b) - 1 = a + b + a·b``, from the exact ``u``: no ``1 + u`` is ever rounded, and it
stays accurate for the ``u = 2^-53`` of binary64. This and every other operation is rounded
upward (+inf only where ``(1 + u)^k`` passes the float64 range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .case import RuntimeInputs
from .formats import Format
from .fparith import add_up, half_ulp_up, mul_up
from .geometry import GRADIENTS, Geometry, blocked_matmul, gemm_blocks, gemm_operands, gemm_result_to_gradient


@dataclass(frozen=True)
class OrderFree:
    """Order-free bound of one gradient, with the ingredients a report may want."""

    bound: np.ndarray
    abs_sum: np.ndarray  # upper bound of Σ|a·b| (or Σ|δ|) per entry
    terms: np.ndarray  # n: non-zero runtime products per entry


def abs_gemm_up(a: np.ndarray, b: np.ndarray, blocks=None) -> np.ndarray:
    """A sure upper bound of ``|a| @ |b|`` from one float64 GEMM (see module docstring)."""
    k = a.shape[-1]
    if k * 2.0**-53 > 0.25:
        raise ValueError(f"inner dimension {k} too large for the float64 inflation")
    c = blocked_matmul(np.abs(a), np.abs(b), blocks)
    c = add_up(c, np.float64(k) * 2.0**-1074)
    return mul_up(c, np.float64(1.0 + k * 2.0**-52))


def count_gemm(a: np.ndarray, b: np.ndarray, blocks=None) -> np.ndarray:
    """Exact counts ``Σ_k [a_k != 0][b_k != 0]`` (integers below 2^53)."""
    return blocked_matmul((a != 0).astype(np.float64), (b != 0).astype(np.float64), blocks)


def growth_up(fmt: Format, k: np.ndarray) -> np.ndarray:
    """A sure upper bound of ``(1 + u)^k - 1`` for each integer ``k >= 0`` (see module docstring)."""
    ks, inverse = np.unique(np.asarray(k, dtype=np.float64), return_inverse=True)
    rest = ks.astype(np.int64)
    out = np.zeros(ks.shape)  # (1 + u)^0 - 1
    power = np.full(ks.shape, float(fmt.unit_roundoff))  # (1 + u)^(2^i) - 1, i = 0: u exact (a power of two)
    with np.errstate(over="ignore", invalid="ignore"):  # past float64's range: +inf, still an upper bound
        while rest.any():
            out = np.where(rest % 2 == 1, _compose_up(out, power), out)
            power = _compose_up(power, power)
            rest >>= 1
    return out[inverse.ravel()].reshape(np.shape(k))


def _compose_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(1 + a)(1 + b) - 1 = a + b + a·b`` rounded upward, for ``a, b >= 0``."""
    return add_up(add_up(a, b), mul_up(a, b))


def _eta_up(fmt: Format) -> float:
    return 0.0 if fmt.emin is None else float(half_ulp_up(np.int64(fmt.emin)))


def product_bound(
    fmt: Format, a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb: np.ndarray, e_a: float, e_b: float, blocks=None
) -> OrderFree:
    """Order-free bound of ``a @ b`` (runtime values) with structural masks ``ma``, ``mb``
    (``blocks``: see :func:`difftest.geometry.gemm_blocks`)."""
    s = abs_gemm_up(a, b, blocks)
    n = count_gemm(a, b, blocks)
    below = add_up(1.0, growth_up(fmt, np.maximum(n - 1, 0)))  # (1 + u)^(n-1), above each η'
    with np.errstate(invalid="ignore"):
        bound = add_up(mul_up(growth_up(fmt, n), s), mul_up(mul_up(n, below), np.float64(_eta_up(fmt))))
    bound = np.where(np.isnan(bound), np.inf, bound)
    if e_a or e_b:
        m = count_gemm(ma, mb, blocks)
        sa = abs_gemm_up(a, mb, blocks)  # Σ|a| over structural positions (a is 0 off them)
        sb = abs_gemm_up(ma, b, blocks)
        eps = add_up(add_up(mul_up(sa, np.float64(e_b)), mul_up(sb, np.float64(e_a))),
                     mul_up(m, np.float64(mul_up(np.float64(2 * e_a), np.float64(e_b)))))
        bound = add_up(bound, eps)
    return OrderFree(bound=bound, abs_sum=s, terms=n)


def order_free_bounds(rt: RuntimeInputs, g: Geometry, gradients=GRADIENTS) -> dict[str, OrderFree]:
    """Order-free bounds of ``gradients`` (default all three) for the runtime values ``rt``;
    each is computed alone, so a subset equals the full computation's."""
    fmt = rt.format
    ops = gemm_operands(rt.input, rt.weight, rt.grad_output, g, gradients)
    ones = gemm_operands(np.ones(g.input_shape), np.ones(g.weight_shape), np.ones(g.grad_output_shape), g,
                         [name for name in gradients if name != "grad_bias"])
    out: dict[str, OrderFree] = {}
    for name in gradients:
        if name == "grad_weight":
            (a, b), (ma, mb) = ops[name], ones[name]  # a = δ, b = x̃
            out[name] = product_bound(fmt, a, b, ma, mb, rt.eps_grad_output, rt.eps_input)
        elif name == "grad_input":
            (a, b), (ma, mb) = ops[name], ones[name]  # a = δ (transposed im2col), b = w
            out[name] = product_bound(fmt, a, b, ma, mb, rt.eps_grad_output, rt.eps_weight, gemm_blocks(name, g))
        else:
            out[name] = _bias_bound(fmt, ops[name][0][0], rt.eps_grad_output)
    return {
        name: OrderFree(
            bound=gemm_result_to_gradient(name, of.bound, g),
            abs_sum=gemm_result_to_gradient(name, of.abs_sum, g),
            terms=gemm_result_to_gradient(name, of.terms, g),
        )
        for name, of in out.items()
    }


def _bias_bound(fmt: Format, d: np.ndarray, eps: float) -> OrderFree:
    """``((1+u)^(n-1) - 1)·Σ|δ| + m·epsδ`` per row of ``d`` (``(O, N·oh·ow)``)."""
    s = abs_gemm_up(d, np.ones((d.shape[1], 1)))[:, 0]
    n = np.count_nonzero(d, axis=1).astype(np.float64)
    bias = mul_up(growth_up(fmt, np.maximum(n - 1, 0)), s)
    if eps:
        bias = add_up(bias, mul_up(np.float64(d.shape[1]), np.float64(eps)))
    return OrderFree(bound=bias, abs_sum=s, terms=n)
