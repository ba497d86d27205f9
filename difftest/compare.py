"""Comparison of a backend's gradient with the exact spec, and the verdict.

| verdict     | meaning                                                                  |
|-------------|--------------------------------------------------------------------------|
| ``pass``      | every entry within the TorchLean certified bound                         |
| ``order``     | beyond the TorchLean bound (one sequential fold order) but within the     |
|             | order-free bound: explained by summation order, blocking or FMA          |
| ``precision`` | beyond both bounds: no order of correctly rounded operations in the      |
|             | claimed format explains it                                               |
| ``domain``    | outside the NF model: non-finite output where overflow was possible, or  |
|             | inputs the backend's format cannot hold                                  |
| ``error``     | the backend raised or returned the wrong shape                           |

A violation is claimed only when it is certain: a lower bound of the error (computed from a
double-double of the exact value, rounded down) exceeds the bound (rounded up).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .exact import ExactTensor
from .formats import Format
from .fparith import add_up, half_ulp_of, mul_up, sub_down

VERDICTS = ("pass", "order", "precision", "domain", "error")

#: How bad a verdict is, for "the worst verdict" and for ``--fail-on``.
SEVERITY = {"pass": 0, "order": 1, "domain": 2, "precision": 3, "error": 4}


def worst_verdict(verdicts) -> str:
    """The most severe of ``verdicts`` (``pass`` when there are none)."""
    return max(verdicts, key=SEVERITY.__getitem__, default="pass")

MEANING = {
    "pass": "every entry is within the TorchLean certified bound",
    "order": "exceeds the TorchLean bound (certified for one sequential fold order) but is within the "
    "order-free bound: explained by summation order, blocking or FMA",
    "precision": "exceeds the TorchLean bound and the order-free bound: no evaluation order of correctly "
    "rounded operations in the claimed format explains it (lower-precision arithmetic, another algorithm, or a bug)",
    "domain": "outside the NF model (non-finite output where overflow was possible, or inputs the "
    "backend's format cannot hold)",
    "error": "the backend raised or returned a wrong shape",
}


@dataclass
class GradientResult:
    """How one backend's gradient compares with the exact spec."""

    verdict: str
    max_ratio: float = 0.0
    max_ratio_order_free: float = 0.0
    violations: int = 0
    violations_order_free: int = 0
    worst_index: list[int] | None = None
    worst: dict | None = None
    message: str = ""
    out_of_model: int = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}


@dataclass
class Errors:
    """Approximate error and sure lower bound of ``|backend - exact|`` per entry."""

    approx: np.ndarray
    lower: np.ndarray
    finite: np.ndarray = field(repr=False)


def error_bounds(values: np.ndarray, exact: ExactTensor) -> Errors:
    """``|values - exact|``: a float64 estimate and a certain lower bound.

    With ``exact = hi + lo + r``, ``|r| <= tail``, ``d1 = fl(b - hi)``, ``d2 = fl(d1 - lo)``:
    ``| |d2| - |b - exact| | <= 2^-52·(|d1| + |d2|) + tail``.
    """
    hi, lo, tail = exact.nearest, exact.residual, exact.tail
    finite = np.isfinite(values)
    b = np.where(finite, values, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        d1 = b - hi
        overflow = ~np.isfinite(d1)  # |b - hi| beyond float64: the error is above 2^1023 surely
        d1 = np.where(overflow, 0.0, d1)
        d2 = d1 - lo
        approx = np.abs(d2)
        slack = add_up(mul_up(add_up(np.abs(d1), approx), np.float64(2.0**-52 * (1 + 2.0**-50))), tail)
        lower = np.maximum(sub_down(approx, slack), 0.0)
    approx = np.where(overflow, np.inf, approx)
    lower = np.where(overflow, 2.0**1023, lower)
    approx = np.where(finite, approx, np.inf)
    lower = np.where(finite, lower, np.inf)
    return Errors(approx=approx, lower=lower, finite=finite)


def _ratio(err: np.ndarray, bound: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = err / bound
    r = np.where(bound == 0, np.where(err == 0, 0.0, np.inf), r)
    return np.where(np.isnan(r), 0.0, r)  # err finite / bound inf


def compare_gradient(
    values: np.ndarray,
    exact: ExactTensor,
    bound: np.ndarray,
    bound_order_free: np.ndarray,
    reach: np.ndarray,
    fmt: Format,
) -> GradientResult:
    """Verdict for one gradient.

    ``reach`` is an upper bound of every partial result's magnitude in any order; where it
    reaches the format's largest finite value a non-finite output is outside the model.
    """
    err = error_bounds(values, exact)
    out_of_model = ~err.finite & (reach >= fmt.max_finite)
    in_model = ~out_of_model
    tl = (err.lower > bound) & in_model
    # precision: beyond the TorchLean bound *and* the order-free one (an entry within the
    # certified bound passes, even where the order-free bound is the tighter of the two)
    of = tl & (err.lower > bound_order_free)
    ratio = np.where(in_model, _ratio(err.approx, bound), 0.0)
    ratio_of = np.where(in_model, _ratio(err.approx, bound_order_free), 0.0)
    if of.any():
        verdict = "precision"
    elif out_of_model.any():
        verdict = "domain"
    elif tl.any():
        verdict = "order"
    else:
        verdict = "pass"
    worst_flat = int(np.argmax(ratio)) if ratio.size else 0
    idx = np.unravel_index(worst_flat, ratio.shape)
    worst = {
        "index": [int(i) for i in idx],
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
        violations=int(tl.sum()),
        violations_order_free=int(of.sum()),
        worst_index=worst["index"],
        worst=worst,
        message=message,
        out_of_model=int(out_of_model.sum()),
    )


def verdict_only(verdict: str, message: str) -> GradientResult:
    """A result with no numbers (``error`` and whole-case ``domain`` verdicts)."""
    return GradientResult(verdict=verdict, message=message)

