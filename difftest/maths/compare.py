"""Comparison of a backend's gradient with the exact spec, and the verdict.

The verdict rule and what each verdict means live in :mod:`difftest.verdicts`. A violation
is claimed only when it is certain: a lower bound of the error (computed from a double-double
of the exact value, rounded down) exceeds the bound (rounded up).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .exact import ExactTensor
from ..values.formats import Format
from ..values.fparith import half_ulp_of
from ..values.outcome import EntryArrays, GradientResult


@dataclass
class Errors:
    """Approximate error and sure lower bound of ``|backend - exact|`` per entry."""

    approx: np.ndarray
    lower: np.ndarray
    finite: np.ndarray = field(repr=False)


def error_bounds(values: np.ndarray, exact: ExactTensor) -> Errors:
    """``|values - exact|``: a float64 estimate and a certain lower bound.

    With ``exact = hi + lo + r``, ``|r| <= tail``, ``d1 = fl(b - hi)``, ``d2 = fl(d1 - lo)``:
    ``| |d2| - |b - exact| | <= 2^-52·(|d1| + |d2|) + tail``; the lower bound is ``|d2|`` less
    that, every operation rounded outwards (compiled: :func:`difftest.kernels.error_bounds`).
    ``b - hi`` past float64 has an error above ``2^1023`` surely; a non-finite ``b`` an error
    ``inf``.
    """
    from .kernels import error_bounds as compiled

    flat = lambda v: np.ascontiguousarray(v, dtype=np.float64).ravel()  # noqa: E731
    b = flat(values)
    approx, lower = np.empty(b.shape), np.empty(b.shape)
    compiled(b, flat(exact.nearest), flat(exact.residual), flat(exact.tail), approx, lower)
    shape = np.shape(values)
    approx, lower = approx.reshape(shape), lower.reshape(shape)
    finite = np.isfinite(values)
    return Errors(approx=approx, lower=lower, finite=finite)


def compare_gradient(
    values: np.ndarray,
    exact: ExactTensor,
    bound: np.ndarray,
    bound_order_free: np.ndarray,
    reach: np.ndarray,
    fmt: Format,
    sample=None,
    shape: tuple[int, ...] | None = None,
) -> GradientResult:
    """Verdict for one gradient (the rule: :mod:`difftest.verdicts`), with its per-entry arrays.

    ``reach`` is an upper bound of every partial result's magnitude in any order; where it
    reaches the format's largest finite value a non-finite output is outside the model.
    With a ``sample`` (:class:`difftest.sampling.GradientSample` of a gradient of ``shape``) the
    arrays hold its entries only, in the order of its indices: the worst entry is named by its
    index in the whole gradient, and the result says it was sampled.
    """
    err = error_bounds(values, exact)
    entries = EntryArrays(error=err.approx, bound=bound, bound_order_free=bound_order_free)
    ratio, ratio_of = entries.ratio("bound"), entries.ratio("bound_order_free")
    beyond_tl = err.lower > bound
    # the order-free bound covers every order, the sequential one too: an entry certainly
    # beyond it is a certain violation, whatever the (often looser) TorchLean bound says
    beyond_of = err.lower > bound_order_free
    out_of_model = np.zeros(np.shape(values), dtype=bool)
    if not err.finite.all():  # only a non-finite output can be outside the model: the rest as they were
        out_of_model = ~err.finite & (reach >= fmt.max_finite)
        beyond_tl &= ~out_of_model
        beyond_of &= ~out_of_model
        ratio = np.where(out_of_model, 0.0, ratio)
        ratio_of = np.where(out_of_model, 0.0, ratio_of)
    if beyond_of.any():
        verdict = "precision"
    elif out_of_model.any():
        verdict = "domain"
    elif beyond_tl.any():
        verdict = "order"
    else:
        verdict = "pass"
    # the worst entry by the ratio that decides the verdict: order-free for precision
    deciding = ratio_of if verdict == "precision" else ratio
    idx = np.unravel_index(int(np.argmax(deciding)) if deciding.size else 0, deciding.shape)
    where = idx if sample is None else np.unravel_index(int(sample.index[idx[0]]), shape)
    worst = {
        "index": [int(i) for i in where],
        "backend": float(values[idx]),
        "exact": float(exact.nearest[idx]),
        "error": float(err.approx[idx]),
        "bound": float(bound[idx]),
        "bound_order_free": float(bound_order_free[idx]),
        "ulps": float(err.approx[idx] / float(2 * half_ulp_of(fmt, np.float64(exact.nearest[idx])))),
    }
    message = ""
    if verdict == "domain":
        message = f"{int(out_of_model.sum())} non-finite entries where {fmt.name} can overflow"
    return GradientResult(
        verdict=verdict,
        max_ratio=float(ratio.max(initial=0.0)),
        max_ratio_order_free=float(ratio_of.max(initial=0.0)),
        violations=int(beyond_tl.sum()),
        violations_order_free=int(beyond_of.sum()),
        worst_index=worst["index"],
        worst=worst,
        message=message,
        out_of_model=int(out_of_model.sum()),
        sampled=None if sample is None else sample.as_dict(),
        entries=entries,
    )
