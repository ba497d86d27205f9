"""Checking backends on a case: exact spec once, bounds once per format, one verdict per gradient."""

from __future__ import annotations

import time
import traceback
import weakref
from dataclasses import dataclass, field

import numpy as np

from .case import Case, RuntimeInputs
from .compare import GradientResult, compare_gradient, verdict_only, worst_verdict
from .errors import DifftestError, NotRepresentable
from .exact import ExactTensor
from .formats import Format
from .fparith import add_up
from .geometry import GRADIENTS
from .orderfree import OrderFree, order_free_bounds
from .replay import replay


@dataclass
class FormatModel:
    """Everything the NF model says about a case in one format."""

    format: Format
    runtime: RuntimeInputs | None
    nf: dict[str, np.ndarray] = field(default_factory=dict)
    bound: dict[str, np.ndarray] = field(default_factory=dict)
    order_free: dict[str, OrderFree] = field(default_factory=dict)
    domain_reason: str = ""


def model_for(case: Case, fmt: Format) -> FormatModel:
    """NF reference, torchlean bound and order-free bound of ``case`` in ``fmt``.

    When the case's values are not in ``fmt`` (and the case does not round inputs), or exceed
    the largest finite value of ``fmt``'s hardware counterpart, the case is outside the model
    for that format and ``domain_reason`` says why.
    """
    try:
        rt = case.runtime(fmt)
    except NotRepresentable as exc:
        return FormatModel(fmt, None, domain_reason=str(exc))
    for name in ("input", "weight", "grad_output"):
        big = float(np.max(np.abs(getattr(rt, name)), initial=0.0))
        if big > fmt.max_finite:
            return FormatModel(fmt, rt, domain_reason=f"{name} holds {big!r}, beyond the largest finite {fmt.name} value")
    rep = replay(rt, case.geometry)
    return FormatModel(
        format=fmt,
        runtime=rt,
        nf={k: v for k, (v, _) in rep.items()},
        bound={k: b for k, (_, b) in rep.items()},
        order_free=order_free_bounds(rt, case.geometry),
    )


@dataclass
class BackendResult:
    """One backend's outcome on one case (the ``results`` entries of ``check --json``)."""

    backend: str
    format: str
    gradients: dict[str, GradientResult]
    seconds: float = 0.0
    error: str = ""
    environment: dict = field(default_factory=dict)
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        d = {
            "backend": self.backend,
            "format": self.format,
            "gradients": {g: r.as_dict() for g, r in self.gradients.items()},
            "seconds": self.seconds,
            "environment": self.environment,
        }
        if self.error:
            d["error"] = self.error
        return d

    def without_outputs(self) -> "BackendResult":
        return BackendResult(self.backend, self.format, self.gradients, self.seconds, self.error, self.environment)

    @property
    def verdict(self) -> str:
        """The worst verdict over the three gradients."""
        return worst_verdict(r.verdict for r in self.gradients.values())


_ENVIRONMENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def environment_of(backend) -> dict:
    """What the backend says ran (read once per backend object); if it cannot be read, why."""
    try:
        return _ENVIRONMENTS[backend]
    except (KeyError, TypeError):
        pass
    try:
        env = backend.environment()
    except Exception as exc:
        env = {"backend": getattr(backend, "name", "?"), "environment_error": f"{type(exc).__name__}: {exc}"}
    try:
        _ENVIRONMENTS[backend] = env
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return env


def run_backend(backend, case: Case, model: FormatModel, exact: dict[str, ExactTensor]) -> BackendResult:
    """Run one backend and judge it; a raising backend gives ``error`` and nothing else stops."""
    fmt = backend.format
    env = environment_of(backend)
    if model.domain_reason:
        return BackendResult(backend.name, fmt.name, {g: verdict_only("domain", model.domain_reason) for g in GRADIENTS},
                             environment=env)
    rt = model.runtime
    t0 = time.perf_counter()
    try:
        out = backend.conv2d_backward(rt.input, rt.weight, rt.grad_output, case.stride, case.padding)
        outputs = {}
        for g in GRADIENTS:
            if g not in out:
                raise DifftestError(f"{backend.name} returned no {g}")
            a = np.asarray(out[g], dtype=np.float64)
            want = case.geometry.shape_of(g)
            if a.shape != want:
                raise DifftestError(f"{backend.name} returned {g} of shape {a.shape}, expected {want}")
            outputs[g] = a
    except Exception as exc:  # the backend is on trial: whatever it raises is its verdict
        msg = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=3)
        return BackendResult(
            backend.name, fmt.name, {g: verdict_only("error", msg) for g in GRADIENTS},
            seconds=time.perf_counter() - t0, error=tb, environment=env,
        )
    seconds = time.perf_counter() - t0
    results = {}
    for g in GRADIENTS:
        of = model.order_free[g]
        reach = add_up(of.abs_sum, of.bound)
        results[g] = compare_gradient(outputs[g], exact[g], model.bound[g], of.bound, reach, fmt)
    return BackendResult(backend.name, fmt.name, results, seconds=seconds, environment=env, outputs=outputs)


def exact_gradients(case: Case, oracle: str = "exact") -> dict[str, ExactTensor]:
    """The exact spec gradients of the case's spec values."""
    from .oracles import get_oracle

    return get_oracle(oracle).spec_gradients(case.input, case.weight, case.grad_output, case.geometry)


def check_case(case: Case, backends: list, oracle: str = "exact") -> list[BackendResult]:
    """Judge each backend on ``case``. The oracle runs once; bounds once per format."""
    exact = exact_gradients(case, oracle)
    models: dict[str, FormatModel] = {}
    results = []
    for b in backends:
        if b.format.name not in models:
            models[b.format.name] = model_for(case, b.format)
        results.append(run_backend(b, case, models[b.format.name], exact))
    return results


def bounds_arrays(case: Case, fmt: Format | None = None, oracle: str = "exact") -> dict[str, np.ndarray]:
    """``g_exact``, ``g_nf``, ``g_bound``, ``g_bound_order_free`` for each gradient ``g``."""
    fmt = case.format if fmt is None else fmt
    model = model_for(case, fmt)
    if model.domain_reason:
        raise DifftestError(model.domain_reason)
    exact = exact_gradients(case, oracle)
    out: dict[str, np.ndarray] = {}
    for g in GRADIENTS:
        out[f"{g}_exact"] = exact[g].nearest
        out[f"{g}_nf"] = model.nf[g]
        out[f"{g}_bound"] = model.bound[g]
        out[f"{g}_bound_order_free"] = model.order_free[g].bound
    return out
