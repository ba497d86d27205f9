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

A sampled check (``sample=N``, :mod:`difftest.sampling`) runs the backends whole and judges
chosen entries of each gradient: the oracle, the NF replay and both bounds of those entries
only (each entry's own terms, the same values as the full check's there), the verdict rule
unchanged; each gradient's result says it was sampled (``sampled``).
"""

from __future__ import annotations

import math
import time
import traceback
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..values.case import Case, RuntimeInputs
from ..maths.compare import compare_gradient
from ..errors import BackendFailed, DifftestError, NotRepresentable
from ..maths.exact import ExactTensor
from ..values.formats import Format
from ..values.fparith import add_up
from ..maths.orderfree import OrderFree, order_free_bounds
from ..values.outcome import BackendResult, GradientResult, verdict_only
from ..maths.replay import replay, replay_entries
from .sampling import Sample, check_size, choose, judged_terms
from ..values.supports import ALL, Supports

__all__ = ["BackendResult", "BackendRun", "NFReference", "GradientResult", "Judgement", "bounds_arrays", "check_case",
           "exact_gradients", "judge_runs", "nf_reference", "run_backend"]


@dataclass
class NFReference:
    """Everything the NF model (TorchLean's rounded-float model) says about a case in one format:
    ``nf`` values, TorchLean ``bound`` and ``order_free`` bounds ("model" alone means a whole
    network in difftest: :mod:`difftest.model`).

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
    #: The judged entries of a sampled check (the arrays above hold those only); None: all.
    sample: Sample | None = None


def nf_reference(case: Case, fmt: Format, sample: Sample | None = None) -> NFReference:
    """NF reference, TorchLean bound and order-free bound of ``case`` in ``fmt``, for the
    case's requested gradients (at the entries of ``sample`` only, where given)."""
    try:
        rt = case.runtime(fmt)
    except NotRepresentable as exc:
        return NFReference(fmt, None, unrepresentable=str(exc), sample=sample)
    t0 = time.perf_counter()
    if sample is None:
        rep = replay(rt, case.geometry, case.gradients)
    else:
        rep = {g: replay_entries(rt, case.geometry, g, sample[g].index) for g in case.gradients}
    t1 = time.perf_counter()
    of = order_free_bounds(rt, case.geometry, case.gradients, sample)
    t2 = time.perf_counter()
    return NFReference(
        format=fmt,
        runtime=rt,
        nf={k: v for k, (v, _) in rep.items()},
        bound={k: b for k, (_, b) in rep.items()},
        order_free=of,
        timings={"nf_and_torchlean_s": t1 - t0, "order_free_s": t2 - t1},
        sample=sample,
    )


_ENVIRONMENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def environment_of(backend) -> dict:
    """What the backend says ran (read once per backend object); if it cannot be read, why."""
    try:
        return _ENVIRONMENTS[backend]
    except (KeyError, TypeError):
        pass
    from ..backends.base import read_environment

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


@dataclass
class BackendRun:
    """What a backend did on a case, before any judgement: its raw outputs (float64, the
    requested gradients' shapes), or the verdict of the whole case where it was not run or
    failed (``unsupported``, ``domain``, ``error``). Plain data: it travels to where the
    judging runs (:mod:`difftest.distributed`)."""

    backend: str
    format: Format
    environment: dict
    outputs: dict[str, np.ndarray] | None = None
    seconds: float = 0.0
    verdict: str = ""  # a whole-case verdict; "" where there are outputs to judge
    message: str = ""
    error: str = ""  # the details of an error (a traceback, a worker's last output)

    def whole_case(self, case: Case) -> BackendResult:
        """One verdict for each requested gradient (``unsupported``, ``domain``, ``error``)."""
        return BackendResult(self.backend, self.format.name, {g: verdict_only(self.verdict, self.message)
                                                              for g in case.gradients},
                             environment=self.environment, requested=case.gradients, seconds=self.seconds,
                             error=self.error)


def supports_of(backend) -> Supports:
    """What ``backend`` takes (:mod:`difftest.supports`): everything where it does not say, or says
    something else than a :class:`Supports`, or raises saying it (a backend is untrusted code: it
    is then run, and what it does is its verdict)."""
    try:
        supports = getattr(backend, "supports", ALL)
    except Exception:  # noqa: BLE001 - a property of the backend's that raised
        return ALL
    return supports if isinstance(supports, Supports) else ALL


def run_backend(backend, case: Case) -> BackendRun:
    """Run one backend on the case's requested gradients, judging nothing: a raising backend
    gives ``error`` and nothing else stops; one that does not take the case's geometry is not run
    (``unsupported``), nor one whose format cannot hold the case's values (``domain``). What it
    returns beyond the request is dropped."""
    from ..backends.base import backward

    env = environment_of(backend)
    fmt = backend.format
    why = supports_of(backend).why_not(case.geometry)
    if why:
        return BackendRun(backend.name, fmt, env, verdict="unsupported", message=f"{backend.name} does not take {why}")
    try:
        rt = case.runtime(fmt)
    except NotRepresentable as exc:
        return BackendRun(backend.name, fmt, env, verdict="domain", message=str(exc))
    reason = _beyond_capacity(backend, rt)
    if reason:
        return BackendRun(backend.name, fmt, env, verdict="domain", message=reason)
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
        return BackendRun(backend.name, fmt, env, seconds=time.perf_counter() - t0, verdict="error", message=str(exc),
                          error=exc.details)
    except Exception as exc:  # the backend is on trial: whatever it raises is its verdict
        return BackendRun(backend.name, fmt, env, seconds=time.perf_counter() - t0, verdict="error",
                          message=f"{type(exc).__name__}: {exc}", error=traceback.format_exc(limit=3))
    return BackendRun(backend.name, fmt, env, outputs, time.perf_counter() - t0)


def judge_run(run: BackendRun, case: Case, model: NFReference | None, exact: dict[str, ExactTensor] | None) -> BackendResult:
    """The verdicts of a backend's run (:func:`run_backend`) against the exact spec and the NF
    reference of its format (at its sampled entries, where it has them)."""
    if run.verdict:
        return run.whole_case(case)
    t1 = time.perf_counter()
    results = {}
    sample = model.sample
    for g in case.gradients:
        of = model.order_free[g]
        reach = add_up(of.abs_sum, of.bound)
        chosen = None if sample is None else sample[g]
        values = run.outputs[g] if chosen is None else run.outputs[g].ravel()[chosen.index]
        results[g] = compare_gradient(values, exact[g], model.bound[g], of.bound, reach, run.format, chosen,
                                      run.outputs[g].shape)
    timings = {"backend_s": run.seconds, "comparison_s": time.perf_counter() - t1}
    return BackendResult(run.backend, run.format.name, results, seconds=run.seconds, environment=run.environment,
                         outputs=run.outputs, timings={**model.timings, **timings}, requested=case.gradients)


class Judgement:
    """The judging of one case: the oracle once (when a first run needs it), the model once per
    format, each run compared; ``say`` hears each stage."""

    def __init__(self, case: Case, oracle: str = "exact", sample: Sample | None = None, say=None):
        self.case, self.oracle, self.sample = case, oracle, sample
        self.say = say if say is not None else (lambda text: None)
        self.exact: dict[str, ExactTensor] | None = None
        self.shared: dict[str, float] = {}
        self.references: dict[str, NFReference] = {}

    def judge(self, run: BackendRun) -> BackendResult:
        if run.verdict:
            return run.whole_case(self.case)
        if self.exact is None:
            self.say("exact spec")
            t0 = time.perf_counter()
            self.exact = exact_gradients(self.case, self.oracle, self.sample)
            self.shared = {"exact_s": time.perf_counter() - t0}
        if run.format.name not in self.references:
            self.say(f"NF model and bounds in {run.format.name}")
            self.references[run.format.name] = nf_reference(self.case, run.format, self.sample)
        r = judge_run(run, self.case, self.references[run.format.name], self.exact)
        r.timings = {**self.shared, **r.timings}
        return r


def judge_runs(case: Case, runs: list[BackendRun], oracle: str = "exact", sample: Sample | None = None) -> list[BackendResult]:
    """Every run of ``case`` judged (:class:`Judgement`): the half of :func:`check_case` that
    needs no backend, only numbers (it runs where :mod:`difftest.distributed` sends it)."""
    judgement = Judgement(case, oracle, sample)
    return [judgement.judge(run) for run in runs]


def exact_gradients(case: Case, oracle: str = "exact", sample: Sample | None = None) -> dict[str, ExactTensor]:
    """The exact spec gradients of the case's spec values (its requested gradients; at the
    entries of ``sample`` only, where given)."""
    from ..oracles import get_oracle

    return get_oracle(oracle).spec_gradients(case.input, case.weight, case.grad_output, case.geometry,
                                             case.gradients, sample=sample)


def sample_of(case: Case, size: int | None, seed: int = 0) -> Sample | None:
    """The entries a check with ``sample=size`` judges (:func:`difftest.sampling.choose`), or
    None where it judges every entry (no ``size``, or one that covers every requested gradient)."""
    if size is None or judged_terms(case.geometry, check_size(size), case.gradients) is None:
        return None  # covers every entry: nothing to choose (a small case of a sampled campaign)
    return choose(case.geometry, case.gradients, size, seed, grad_output=case.grad_output)


def check_case(case: Case, backends: list, oracle: str = "exact", stop=None, max_memory="auto",
               progress=None, sample: int | None = None, seed: int = 0, cluster=None) -> list[BackendResult]:
    """Judge each backend on ``case``'s requested gradients: the oracle runs once, the model
    once per format.

    A backend is a :class:`~difftest.backends.Backend`, a registered name, a plain function
    ``(x, w, d, stride, padding) -> (grad_input, grad_weight, grad_bias)`` (judged in the
    case's format) or a ``(function, format)`` pair. ``stop(result)``, when given, is asked
    after each backend; a true answer ends the judgement there (the results so far are returned).

    ``sample=N`` judges at most ``N`` entries of each gradient, chosen from ``seed``
    (:mod:`difftest.sampling`); every entry where ``N`` covers the gradients. With a ``cluster``
    (:class:`difftest.distributed.Cluster`) the backends run here and the judging there (every
    backend runs; ``stop`` then trims the results).

    Before any work the cost is estimated (:mod:`difftest.estimate`): above ``max_memory`` bytes
    (``"auto"``: 60 % of the machine's memory; ``None``: no limit) the case is refused with
    :class:`~difftest.estimate.CaseTooLarge`, which suggests a sample where the full check is too
    large. ``progress(text)``, when given, hears each stage of a case estimated to take more
    than a few seconds.
    """
    from ..backends import as_backend
    from .estimate import PROGRESS_SECONDS

    backends = [as_backend(b, case.format) for b in backends]
    chosen = sample_of(case, sample, seed)
    cost = affordable(case, len({b.format.name for b in backends}), chosen, max_memory, sample)
    heard = progress if progress is not None and cost.seconds > PROGRESS_SECONDS else None
    said = []

    def say(text: str) -> None:  # the first stage line carries the estimate
        if heard is not None:
            heard(text if said else f"{cost.describe()}; {text}")
            said.append(text)

    judgement = Judgement(case, oracle, chosen, say)
    results = []
    if cluster is not None:
        runs = []
        for b in backends:
            say(f"running {b.name}")
            runs.append(run_backend(b, case))
        say("judging on the cluster")
        for r in cluster.judge(case, runs, oracle, chosen):
            results.append(r)
            if stop is not None and stop(r):
                break
        return results
    for b in backends:
        say(f"running {b.name}")
        results.append(judgement.judge(run_backend(b, case)))
        if stop is not None and stop(results[-1]):
            break
    return results


def affordable(case: Case, formats: int, chosen: Sample | None, max_memory, size: int | None):
    """The estimate of judging ``case`` (at a sample of ``size``, where ``chosen``), refused with
    :class:`~difftest.estimate.CaseTooLarge` above ``max_memory``; a full check that is refused
    suggests a sample (of ``size``, else :data:`difftest.sampling.DEFAULT_SIZE`) and its estimate."""
    from .estimate import estimate, refuse_if_too_large, too_large
    from .sampling import DEFAULT_SIZE

    cost = estimate(case.geometry, formats, None if chosen is None else size, case.gradients)
    if too_large(cost, max_memory):
        suggest = size or DEFAULT_SIZE
        sampled = None if chosen is not None else estimate(case.geometry, formats, suggest, case.gradients)
        refuse_if_too_large(cost, max_memory, sampled, suggest)
    return cost


def bounds_arrays(case: Case, fmt: Format | None = None, oracle: str = "exact", max_memory="auto",
                  sample: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """``g_exact``, ``g_nf``, ``g_bound``, ``g_bound_order_free`` for each requested gradient
    ``g`` of the case (``max_memory``, ``sample`` and ``seed`` as in :func:`check_case`); a
    sampled one holds its judged entries only, 1-D, with ``g_index``: their flat indices in the
    gradient (C order)."""
    chosen = sample_of(case, sample, seed)
    affordable(case, 1, chosen, max_memory, sample)
    fmt = case.format if fmt is None else fmt
    model = nf_reference(case, fmt, chosen)
    if model.runtime is None:
        raise DifftestError(model.unrepresentable)
    exact = exact_gradients(case, oracle, chosen)
    out: dict[str, np.ndarray] = {}
    for g in case.gradients:
        if chosen is not None:
            out[f"{g}_index"] = chosen[g].index
        out[f"{g}_exact"] = exact[g].nearest
        out[f"{g}_nf"] = model.nf[g]
        out[f"{g}_bound"] = model.bound[g]
        out[f"{g}_bound_order_free"] = model.order_free[g].bound
    return out
