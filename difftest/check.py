"""The one pipeline: exact spec once, NF model and bounds once per format, a verdict per gradient.

:func:`check_case` is the only place where the oracle, the NF replay, the bounds and the
comparison are put together; ``difftest check``, ``difftest run``, ``difftest model``,
``difftest bench``, :func:`difftest.assert_within_bounds` and the pytest plugin all judge through
it. A backend that does not take the case's geometry (:mod:`difftest.supports`) is not run:
``unsupported``, and nothing is computed for it. It returns
typed :class:`~difftest.outcome.BackendResult` objects; each records the seconds its stages
took (``timings``: ``exact_s``, ``nf_and_torchlean_s``, ``order_free_s`` shared by the backends
of one format, ``backend_s`` and ``comparison_s`` of its own).

Only the case's requested gradients (``case.gradients``) are asked of a backend, computed by
the oracle and the model, and judged; a result holds a verdict for each of them and records
them (``requested``).
"""

from __future__ import annotations

import math
import time
import traceback
import weakref
from dataclasses import dataclass, field

import numpy as np

from .case import Case, RuntimeInputs
from .compare import compare_gradient
from .errors import BackendFailed, DifftestError, NotRepresentable
from .exact import ExactTensor
from .formats import Format
from .fparith import add_up
from .orderfree import OrderFree, order_free_bounds
from .outcome import BackendResult, GradientResult, verdict_only
from .replay import replay
from .supports import ALL, Supports

__all__ = ["BackendResult", "FormatModel", "GradientResult", "bounds_arrays", "check_case", "exact_gradients", "model_for"]


@dataclass
class FormatModel:
    """Everything the NF model says about a case in one format.

    The model has no overflow: it exists whenever the format holds the case's runtime values
    (or the case rounds them). ``unrepresentable`` says why it does not exist otherwise.
    """

    format: Format
    runtime: RuntimeInputs | None
    nf: dict[str, np.ndarray] = field(default_factory=dict)
    bound: dict[str, np.ndarray] = field(default_factory=dict)
    order_free: dict[str, OrderFree] = field(default_factory=dict)
    unrepresentable: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def model_for(case: Case, fmt: Format) -> FormatModel:
    """NF reference, TorchLean bound and order-free bound of ``case`` in ``fmt``, for the
    case's requested gradients."""
    try:
        rt = case.runtime(fmt)
    except NotRepresentable as exc:
        return FormatModel(fmt, None, unrepresentable=str(exc))
    t0 = time.perf_counter()
    rep = replay(rt, case.geometry, case.gradients)
    t1 = time.perf_counter()
    of = order_free_bounds(rt, case.geometry, case.gradients)
    t2 = time.perf_counter()
    return FormatModel(
        format=fmt,
        runtime=rt,
        nf={k: v for k, (v, _) in rep.items()},
        bound={k: b for k, (_, b) in rep.items()},
        order_free=of,
        timings={"nf_and_torchlean_s": t1 - t0, "order_free_s": t2 - t1},
    )


_ENVIRONMENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def environment_of(backend) -> dict:
    """What the backend says ran (read once per backend object); if it cannot be read, why."""
    try:
        return _ENVIRONMENTS[backend]
    except (KeyError, TypeError):
        pass
    from .backends.base import read_environment

    env = read_environment(backend)
    try:
        _ENVIRONMENTS[backend] = env
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return env


def _beyond_capacity(backend, rt: RuntimeInputs) -> str:
    """Why ``backend`` cannot hold the runtime values (its hardware format overflows), or ""."""
    limit = getattr(backend, "max_finite", rt.format.max_finite)
    if limit == math.inf:
        return ""
    for name in ("input", "weight", "grad_output"):
        big = float(np.max(np.abs(getattr(rt, name)), initial=0.0))
        if big > limit:
            return f"{name} holds {big!r}, beyond the largest finite {rt.format.name} value {limit!r} this backend can hold"
    return ""


def _whole_case(backend, case: Case, verdict: str, message: str, env: dict, **kw) -> BackendResult:
    """One verdict for each requested gradient (``domain`` without running, ``error``)."""
    return BackendResult(backend.name, backend.format.name, {g: verdict_only(verdict, message) for g in case.gradients},
                         environment=env, requested=case.gradients, **kw)


def supports_of(backend) -> Supports:
    """What ``backend`` takes (:mod:`difftest.supports`): everything where it does not say, or says
    something else than a :class:`Supports`, or raises saying it (a backend is untrusted code: it
    is then run, and what it does is its verdict)."""
    try:
        supports = getattr(backend, "supports", ALL)
    except Exception:  # noqa: BLE001 - a property of the backend's that raised
        return ALL
    return supports if isinstance(supports, Supports) else ALL


def run_backend(backend, case: Case, model: FormatModel | None, exact: dict[str, ExactTensor] | None) -> BackendResult:
    """Run one backend on the case's requested gradients and judge those; a raising backend
    gives ``error`` and nothing else stops; one that does not take the case's geometry is not run
    (``unsupported``). What it returns beyond the request is dropped."""
    from .backends.base import backward

    env = environment_of(backend)
    why = supports_of(backend).why_not(case.geometry)
    if why:
        return _whole_case(backend, case, "unsupported", f"{backend.name} does not take {why}", env)
    rt = model.runtime
    if rt is None:
        return _whole_case(backend, case, "domain", model.unrepresentable, env)
    reason = _beyond_capacity(backend, rt)
    if reason:
        return _whole_case(backend, case, "domain", reason, env)
    t0 = time.perf_counter()
    try:
        out = backward(backend, rt.input, rt.weight, rt.grad_output, case.stride, case.padding, case.gradients,
                       case.dilation, case.groups)
        outputs = {}
        for g in case.gradients:
            if g not in out:
                raise DifftestError(f"{backend.name} returned no {g}")
            a = np.asarray(out[g], dtype=np.float64)
            want = case.geometry.shape_of(g)
            if a.shape != want:
                raise DifftestError(f"{backend.name} returned {g} of shape {a.shape}, expected {want}")
            outputs[g] = a
    except BackendFailed as exc:  # in its worker: it crashed, hung or raised there
        return _whole_case(backend, case, "error", str(exc), env, seconds=time.perf_counter() - t0,
                           error=exc.details)
    except Exception as exc:  # the backend is on trial: whatever it raises is its verdict
        return _whole_case(backend, case, "error", f"{type(exc).__name__}: {exc}", env,
                           seconds=time.perf_counter() - t0, error=traceback.format_exc(limit=3))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = {}
    for g in case.gradients:
        of = model.order_free[g]
        reach = add_up(of.abs_sum, of.bound)
        results[g] = compare_gradient(outputs[g], exact[g], model.bound[g], of.bound, reach, rt.format)
    timings = {"backend_s": seconds, "comparison_s": time.perf_counter() - t1}
    return BackendResult(backend.name, backend.format.name, results, seconds=seconds, environment=env,
                         outputs=outputs, timings=timings, requested=case.gradients)


def exact_gradients(case: Case, oracle: str = "exact") -> dict[str, ExactTensor]:
    """The exact spec gradients of the case's spec values (its requested gradients)."""
    from .oracles import get_oracle

    return get_oracle(oracle).spec_gradients(case.input, case.weight, case.grad_output, case.geometry,
                                             case.gradients)


def check_case(case: Case, backends: list, oracle: str = "exact", stop=None, max_memory="auto",
               progress=None) -> list[BackendResult]:
    """Judge each backend on ``case``'s requested gradients: the oracle runs once, the model
    once per format.

    A backend is a :class:`~difftest.backends.Backend`, a registered name, a plain function
    ``(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` (judged in the
    case's format) or a ``(function, format)`` pair. ``stop(result)``, when given, is asked
    after each backend; a true answer ends the judgement there (the results so far are returned).

    Before any work the cost is estimated (:mod:`difftest.estimate`): above ``max_memory`` bytes
    (``"auto"``: 60 % of the machine's memory; ``None``: no limit) the case is refused with
    :class:`~difftest.estimate.CaseTooLarge`. ``progress(text)``, when given, hears each stage of
    a case estimated to take more than a few seconds.
    """
    from .backends import as_backend
    from .estimate import PROGRESS_SECONDS, estimate, refuse_if_too_large

    backends = [as_backend(b, case.format) for b in backends]
    cost = estimate(case.geometry, formats=len({b.format.name for b in backends}))
    refuse_if_too_large(cost, max_memory)
    say = progress if progress is not None and cost.seconds > PROGRESS_SECONDS else (lambda text: None)
    exact, shared = None, {}
    models: dict[str, FormatModel] = {}
    results = []
    for b in backends:
        if not supports_of(b).takes(case.geometry):  # not run: nothing to compute for it
            results.append(run_backend(b, case, None, None))
            if stop is not None and stop(results[-1]):
                break
            continue
        if exact is None:
            say(f"{cost.describe()}; exact spec")
            t0 = time.perf_counter()
            exact = exact_gradients(case, oracle)
            shared = {"exact_s": time.perf_counter() - t0}
        if b.format.name not in models:
            say(f"NF model and bounds in {b.format.name}")
            models[b.format.name] = model_for(case, b.format)
        model = models[b.format.name]
        say(f"running {b.name}")
        r = run_backend(b, case, model, exact)
        r.timings = {**shared, **model.timings, **r.timings}
        results.append(r)
        if stop is not None and stop(r):
            break
    return results


def bounds_arrays(case: Case, fmt: Format | None = None, oracle: str = "exact", max_memory="auto") -> dict[str, np.ndarray]:
    """``g_exact``, ``g_nf``, ``g_bound``, ``g_bound_order_free`` for each requested gradient
    ``g`` of the case (``max_memory`` as in :func:`check_case`)."""
    from .estimate import estimate, refuse_if_too_large

    refuse_if_too_large(estimate(case.geometry), max_memory)
    fmt = case.format if fmt is None else fmt
    model = model_for(case, fmt)
    if model.runtime is None:
        raise DifftestError(model.unrepresentable)
    exact = exact_gradients(case, oracle)
    out: dict[str, np.ndarray] = {}
    for g in case.gradients:
        out[f"{g}_exact"] = exact[g].nearest
        out[f"{g}_nf"] = model.nf[g]
        out[f"{g}_bound"] = model.bound[g]
        out[f"{g}_bound_order_free"] = model.order_free[g].bound
    return out
