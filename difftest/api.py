"""Assertions for users' own tests."""

from __future__ import annotations

from .case import Case
from .check import BackendResult, check_case
from .compare import MEANING

_ALLOWED = {"torchlean": ("pass",), "order-free": ("pass", "order")}


def assert_within_bounds(case: Case, backend, bound: str = "torchlean") -> BackendResult:
    """Run ``backend`` (a name or a Backend) on ``case`` and assert every gradient is within ``bound``.

    ``bound="torchlean"`` requires the verdict ``pass`` (within the Lean-certified bound);
    ``bound="order-free"`` also accepts ``order`` (explained by evaluation order). Raises
    ``AssertionError`` naming the gradient, verdict, worst entry and ratios; returns the result.
    """
    from .backends import get_backend

    if bound not in _ALLOWED:
        raise ValueError(f"bound must be one of {list(_ALLOWED)}, got {bound!r}")
    b = get_backend(backend) if isinstance(backend, str) else backend
    (result,) = check_case(case, [b])
    bad = {g: r for g, r in result.gradients.items() if r.verdict not in _ALLOWED[bound]}
    if bad:
        lines = [f"{b.name} exceeds the {bound} bound on a case of geometry {case.geometry.as_dict()}:"]
        for g, r in bad.items():
            w = r.worst or {}
            lines.append(
                f"  {g}: {r.verdict} ({MEANING[r.verdict]}); max_ratio {r.max_ratio:.4g}, "
                f"order-free ratio {r.max_ratio_order_free:.4g}, {r.violations} entries beyond the TorchLean bound"
                + (f"; worst {w.get('index')}: backend {w.get('backend')!r}, exact {w.get('exact')!r}" if w else "")
                + (f"; {r.message}" if r.message else "")
            )
        raise AssertionError("\n".join(lines))
    return result
