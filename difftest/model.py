"""Whole models: every ``nn.Conv2d`` of a network, captured in one float64 pass and judged layer
by layer through the one pipeline (:func:`difftest.check.check_case`).

``difftest model resnet50`` builds the network (a torchvision model name, randomly initialised
with ``weights=None``, or ``package.module:callable`` returning a ``torch.nn.Module``), runs one
forward and backward pass in float64 on seeded inputs and records, for each convolution, the
input it saw, its weight and the gradient of the loss with respect to its output. Each becomes a
:class:`~difftest.case.Case` with ``round_inputs=True``: the captured float64 values are the spec
values, each backend computes with them rounded into its own format, and the exact rounding
errors are the eps hypotheses (as ``difftest check --round-inputs``). The oracle runs once per
layer, the NF model and bounds once per format.

Choices, and why:

* ``eval()`` semantics: BatchNorm normalises with its running statistics (a fixed affine map per
  channel) and dropout is off. In ``train()`` mode BatchNorm normalises with batch statistics,
  which fails for a batch of one at 1 × 1 spatial size and makes every layer's gradient depend
  on the whole batch; the convolutions' own arithmetic is the same in both modes.
* The loss is a seeded random linear functional of the output, ``Σ r·y`` with ``r`` standard
  normal: every output entry gets its own weight, so no gradient is trivially all ones.
* The bias is irrelevant to the arrays: ``grad_bias`` is the sum of the output gradient.
* A layer whose padding is not zero padding (``padding_mode`` other than ``"zeros"``), whose
  ``padding="same"`` is asymmetric (an even dilated kernel: torch pads the extra row and column
  at the end), whose class overrides ``forward`` (it may not compute ``conv2d(x, weight)``), or
  whose output does not reach the loss is listed with the reason it is skipped.

Everything is written as a result directory (``results.jsonl``, ``cases/``, ``model.json``)
so ``difftest report`` draws it, with a layer axis, from the files alone.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
import time
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .values.case import Case
from .errors import DifftestError
from .judge.estimate import Estimate, estimate, format_size, refuse_if_too_large, too_large
from .judge.explain import format_ratio, plural, reproduce_command, sampled_of
from .values.geometry import GRADIENTS, Geometry
from .values.outcome import BackendResult, FindingKey, jsonable
from .judge.sampling import DEFAULT_SIZE, judged_terms
from .values.verdicts import is_finding

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
#: The geometry keys of a layer in ``difftest model --json``.
GEOMETRY_KEYS = ("N", "C", "H", "W", "O", "kH", "kW", "stride", "padding", "dilation", "groups")
#: Per-result fields of ``difftest model --json``.
GRADIENT_KEYS = ("verdict", "max_ratio", "max_ratio_order_free", "violations", "violations_order_free", "sampled")


# --- building the model --------------------------------------------------------------------

def import_torchvision():
    """``torchvision``, importable also where its compiled operators were built for another torch
    (PyPI's CUDA wheel next to a CPU torch fails at import, registering operators it could not
    load). Its models are pure Python and need none of those operators, so the import is retried
    without the two modules that register them; anything else is a :class:`DifftestError` saying
    what to install."""
    try:
        import torchvision  # noqa: F401
        return torchvision
    except ImportError as exc:
        raise DifftestError(f"torchvision is not installed ({exc}); install it with pip install "
                            "'difftest[all]' (torchvision matching your torch), or give package.module:callable") from None
    except Exception as exc:  # noqa: BLE001 - torchvision's own import failed
        first = f"{type(exc).__name__}: {exc}"
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    stubs = ("torchvision._meta_registrations", "torchvision._autograd_registrations")
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001
        raise DifftestError(f"torchvision cannot be imported ({first}; without its operators: "
                            f"{type(exc).__name__}: {exc}); install the torchvision build that matches your torch") from None
    print(f"difftest: note: torchvision's compiled operators do not load with this torch ({first}); its models "
          "need none of them, so they are used without", file=sys.stderr)
    return torchvision


def load_model(spec: str, seed: int = 0):
    """The ``torch.nn.Module`` named by ``spec`` — a torchvision model name (random weights,
    ``weights=None``) or ``package.module:callable`` — built after ``torch.manual_seed(seed)``."""
    import torch

    torch.manual_seed(seed)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise DifftestError(f"model {spec!r}: give package.module:callable, e.g. mypkg.nets:make_net")
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as python -m does: modules of the current directory
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - the user's module
            raise DifftestError(f"model {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
        try:
            factory = module
            for part in attr.split("."):
                factory = getattr(factory, part)
        except AttributeError:
            raise DifftestError(f"model {spec!r}: {module_name} has no attribute {attr}") from None
        if not callable(factory):
            raise DifftestError(f"model {spec!r}: {attr} is not callable")
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise DifftestError(f"model {spec!r}: calling {attr}() raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, torch.nn.Module):
            raise DifftestError(f"model {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", spec):
        raise DifftestError(f"model {spec!r}: give a torchvision model name (resnet18, mobilenet_v2, ...) or "
                            "package.module:callable")
    try:
        tv = import_torchvision()
    except DifftestError as exc:
        raise DifftestError(f"model {spec!r} names a torchvision model (it is not package.module:callable), "
                            f"but {exc}") from None
    names = set(tv.models.list_models())
    if spec not in names:
        near = sorted(n for n in names if n.startswith(spec[:4]))[:6]
        raise DifftestError(f"unknown model {spec!r}: not a torchvision model name"
                            + (f" (did you mean {', '.join(near)}?)" if near else "")
                            + "; torchvision.models.list_models() lists them, or give package.module:callable")
    import inspect

    builder = tv.models.get_model_builder(spec)
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # nothing is downloaded
    torch.manual_seed(seed)
    return tv.models.get_model(spec, **kwargs)


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; anything else a clear :class:`DifftestError`."""
    parts = str(text).replace("x", ",").replace("×", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise DifftestError(f"--input-shape must be N,C,H,W (four positive integers, e.g. 1,3,224,224), got {text!r}")
    return shape


def model_label(spec: str) -> str:
    """A file-name-safe name for the model (the default output directory)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "model"


# --- capturing the convolutions ---------------------------------------------------------------

@dataclass
class Capture:
    """One call of one ``nn.Conv2d``: what it computed with, or why it is skipped."""

    name: str
    stride: tuple[int, int]
    padding: tuple[int, int] | None
    dilation: tuple[int, int]
    groups: int
    input: np.ndarray | None = None
    weight: np.ndarray | None = None
    grad_output: np.ndarray | None = None
    skipped: str = ""

    @property
    def geometry(self) -> Geometry | None:
        if self.skipped:
            return None
        return Geometry.of(self.input.shape, self.weight.shape, self.stride, self.padding, self.dilation, self.groups)


def _padding_of(m) -> tuple[tuple[int, int] | None, str]:
    """A conv module's zero padding per axis, or why it has none that Conv2D expresses."""
    if m.padding_mode != "zeros":
        return None, f"padding_mode {m.padding_mode!r}: the NF model covers zero padding only"
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0), ""
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(t % 2 for t in totals):
            return None, ("padding='same' with an even dilated kernel pads asymmetrically (torch puts the "
                          "extra row or column at the end), which Conv2D's symmetric padding cannot express")
        return (totals[0] // 2, totals[1] // 2), ""
    return (int(m.padding[0]), int(m.padding[1])), ""


def _flat_tensors(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def _seeded_input(shape, seed: int):
    import torch

    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(shape))


def forward_backward(model, x, seed: int) -> None:
    """One float64 forward and backward pass; the loss is ``Σ r·y`` over every floating output
    tensor ``y``, ``r`` seeded standard normal (a random linear functional)."""
    import torch

    outs = _flat_tensors(model(x))
    if not outs:
        raise DifftestError("the model returned no floating-point tensor to differentiate")
    rng = np.random.default_rng(seed + 1)
    loss = sum((o * torch.from_numpy(rng.standard_normal(tuple(o.shape)))).sum() for o in outs)
    if not loss.requires_grad:
        raise DifftestError("the model's output does not depend on its parameters (nothing to differentiate)")
    loss.backward()


def capture(model, input_shape, seed: int = 0, select=None) -> tuple[list[Capture], int]:
    """Every call of an ``nn.Conv2d`` in one float64 forward and backward pass of ``model`` (in
    ``eval()`` mode) on a seeded standard normal input: ``(captures in call order, number of
    convolutions)``. ``select(name)`` (default all) picks the layers whose arrays are kept."""
    import torch

    model.double().eval()
    convs = [(n or "(model)", m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise DifftestError("the model has no torch.nn.Conv2d layer")
    calls: dict[str, int] = {}
    captures: list[Capture] = []
    handles = []

    def hook(name, m, args, output):
        calls[name] = calls.get(name, 0) + 1
        label = name if calls[name] == 1 else f"{name}#{calls[name]}"  # a module called twice
        if select is not None and not select(label):
            return None
        padding, why = _padding_of(m)
        c = Capture(label, tuple(m.stride), padding, tuple(m.dilation), int(m.groups))
        captures.append(c)
        if type(m).forward is not torch.nn.Conv2d.forward:
            why = why or f"{type(m).__name__} overrides forward: it may not compute conv2d(input, weight)"
        if why:
            c.skipped = why
            return None
        c.input = args[0].detach().numpy().copy()
        c.weight = m.weight.detach().numpy().copy()

        def grab(grad):
            c.grad_output = grad.detach().numpy().copy()

        output.register_hook(grab)
        return output.clone()  # what later layers modify in place is the clone, not the hooked tensor

    for name, m in convs:
        handles.append(m.register_forward_hook(lambda m, a, o, name=name: hook(name, m, a, o)))
    try:
        x = _seeded_input(input_shape, seed)
        try:
            forward_backward(model, x, seed)
        except DifftestError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model on the user's shape
            raise DifftestError(f"the model failed on input shape {','.join(map(str, input_shape))}: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                                "give an --input-shape it accepts") from None
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    for c in captures:
        if not c.skipped and c.grad_output is None:
            c.skipped, c.input, c.weight = "its output does not reach the loss (no gradient)", None, None
    return captures, len(convs)


def torch_seconds(model, input_shape, seed: int = 0, repeat: int = 3) -> float:
    """torch's own float64 forward and backward of the whole model (no hooks), median of
    ``repeat`` runs after one warm-up."""
    import statistics

    model.double().eval()
    x = _seeded_input(input_shape, seed)
    times = []
    for k in range(repeat + 1):
        t0 = time.perf_counter()
        forward_backward(model, x, seed)
        if k:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


# --- judging ------------------------------------------------------------------------------------

def case_of(c: Capture, fmt) -> Case:
    """The layer's case: the captured float64 values are the spec, rounded into each backend's
    format with their exact rounding errors as eps (``round_inputs``)."""
    return Case(c.input, c.weight, c.grad_output, stride=c.stride, padding=c.padding, dilation=c.dilation,
                groups=c.groups, format=fmt, round_inputs=True)


def case_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("#", "-call")) + ".npz"


def geometry_text(g: Geometry) -> str:
    """``1×64×56×56 → 64, 3×3, stride 1, padding 1`` and, outside TorchLean's spec, ``(extension: …)``."""
    return g.layer_text() + (f" (extension: {', '.join(g.extensions)})" if g.extensions else "")


@dataclass
class LayerResult:
    name: str
    geometry: Geometry | None
    case_file: str | None = None
    results: list[BackendResult] = field(default_factory=list)
    seconds: float = 0.0
    estimate: Estimate | None = None
    skipped: str = ""

    def to_dict(self) -> dict:
        """A layer of ``difftest model --json`` (exactly its documented keys)."""
        g = self.geometry.as_dict() if self.geometry is not None else {}
        return {"name": self.name, "geometry": {k: g.get(k) for k in GEOMETRY_KEYS}, "case_file": self.case_file,
                "results": [{"backend": r.backend, "format": r.format,
                             "gradients": {name: {k: getattr(gr, k) for k in GRADIENT_KEYS}
                                           for name, gr in r.gradients.items()}}
                            for r in self.results]}


@dataclass
class ModelResult:
    model: str
    input_shape: tuple[int, int, int, int]
    seed: int
    backends: list[str]
    convolutions: int
    layers: list[LayerResult]
    seconds: float
    out: Path
    capture_s: float = 0.0

    def to_json(self) -> dict:
        """``{"model", "input_shape", "layers", "seconds"}``: judged layers only (skipped ones are
        in the table, the report and ``model.json``)."""
        return jsonable({"model": self.model, "input_shape": list(self.input_shape),
                         "layers": [layer.to_dict() for layer in self.layers if not layer.skipped],
                         "seconds": self.seconds})


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)


def _eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def check_model(spec: str, backends: list, input_shape=DEFAULT_INPUT_SHAPE, layers: str | None = None,
                seed: int = 0, out: Path | None = None, max_memory="auto", progress=None, expectations=None,
                isolate: bool = True, backend_timeout: float | None = None, overwrite: bool = False,
                sample: int | None = None, scheduler: str | None = None) -> ModelResult:
    """Capture every convolution of model ``spec`` (``layers``: a regular expression its
    qualified name must contain, :func:`re.search`) and judge each with ``backends`` through
    :func:`difftest.check.check_case`, each backend in a worker process unless ``isolate`` is
    false (:mod:`difftest.isolation`; ``backend_timeout`` seconds per call, default its own).
    Writes the result directory ``out`` (default ``reports/model/<model>``; a run there before is
    kept as ``<out>.previous`` unless ``overwrite``) through :class:`difftest.store.Recorder`: a
    case file per layer (written before its backends run), ``results.jsonl``, ``model.json``,
    ``campaign.json`` and the ``expectations`` it was judged with. ``progress(text)`` hears the
    estimate and each layer, with the time left.

    ``sample=N`` judges at most ``N`` entries of each gradient of every layer (from ``seed``,
    :mod:`difftest.sampling`); without it a layer whose full check is above ``max_memory`` is
    judged at a sample of :data:`~difftest.sampling.DEFAULT_SIZE` entries instead (and says so),
    every other layer whole.

    ``scheduler``: a Dask scheduler's address (:mod:`difftest.distributed`): the backends run
    here, the judging of the layers there, several layers in flight; the result directory is
    written here as without it."""
    from .judge.check import check_case, run_backend, sample_of
    from .judge.distributed import IN_FLIGHT, connect
    from .judge.isolation import DEFAULT_TIMEOUT, Workers
    from .records.store import MODEL, Recorder, holds_run

    pattern = None
    if layers is not None:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise DifftestError(f"--layers {layers!r} is not a valid regular expression: {exc}") from None
    if not backends:
        raise DifftestError("no backend to judge with")
    from .backends import get_backend

    backends = [get_backend(b) if isinstance(b, str) else b for b in backends]
    out = Path(out) if out is not None else Path("reports/model") / model_label(spec)
    if out.is_dir() and any(out.iterdir()) and not holds_run(out):
        raise DifftestError(f"--out {out} holds other files (it is rewritten: cases/, results.jsonl, ...); give a new "
                            "or empty directory, or an earlier difftest model directory")
    t_start = time.perf_counter()
    pool = Workers(DEFAULT_TIMEOUT if backend_timeout is None else backend_timeout) if isolate else None
    starting = _Starting(pool, backends) if pool is not None else None  # workers start while the model runs
    try:
        model = load_model(spec, seed)
        _say(progress, f"{spec}: forward and backward in float64 on input {'×'.join(map(str, input_shape))} (seed {seed})")
        captures, n_convs = capture(model, input_shape, seed,
                                    select=None if pattern is None else (lambda n: pattern.search(n) is not None))
        if not captures:
            names = [n or "(model)" for n, m in model.named_modules() if type(m).__name__.endswith("Conv2d")]
            raise DifftestError(f"--layers {layers!r} matches none of the model's {plural(n_convs, 'convolution')} "
                                f"(e.g. {', '.join(names[:4])})")
        capture_s = time.perf_counter() - t_start
        del model
        formats = len({b.format.name for b in backends})
        judged = [c for c in captures if not c.skipped]
        samples: dict[str, int | None] = {}
        costs: dict[str, Estimate] = {}
        for c in judged:
            samples[c.name], costs[c.name] = layer_plan(c.geometry, formats, sample, max_memory)
            try:
                refuse_if_too_large(costs[c.name], max_memory, size=samples[c.name])
            except DifftestError as exc:
                raise type(exc)(f"layer {c.name}: {exc}; or leave it out with --layers") from None
        if sample is None and any(samples.values()):
            big = [n for n, v in samples.items() if v]
            _say(progress, f"{plural(len(big), 'layer')} above the memory limit judged at a sample of {DEFAULT_SIZE} "
                           f"entries per gradient (--sample N samples every layer): {', '.join(big[:4])}"
                           + (", …" if len(big) > 4 else ""))
        total_s = sum(e.seconds for e in costs.values())
        held = sum(a.nbytes for c in judged for a in (c.input, c.weight, c.grad_output))
        if costs:
            big = max(costs, key=lambda n: costs[n].peak_bytes)
            _say(progress, f"{plural(len(judged), 'layer')} to judge ({len(captures) - len(judged)} skipped), "
                           f"{sum(e.macs for e in costs.values()) / 1e6:.1f} M multiply-adds per gradient, "
                           f"{plural(len(backends), 'backend')} in {plural(formats, 'format')}: estimated {_eta(total_s)} and "
                           f"{format_size(costs[big].peak_bytes + held)} peak memory (largest layer {big}, plus "
                           f"{format_size(held)} of captured arrays)")

        cluster = connect(scheduler)
        recorder = Recorder(out, seed=seed, expectations=expectations, overwrite=overwrite, outputs="findings")
    except BaseException:
        if starting is not None:
            starting.join()
            pool.close()
        raise
    info = {"profile": "model", "model": spec, "input_shape": list(input_shape), "seed": seed, "shard": "1/1",
            "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time())),
            "backends": [b.name for b in backends], "isolate": isolate,
            "backend_timeout_s": (backend_timeout or DEFAULT_TIMEOUT) if isolate else None,
            "scheduler": scheduler}
    results: list[LayerResult] = []
    first_seen: set[FindingKey] = set()
    done_est = done_s = 0.0
    try:
        if recorder.previous is not None:
            info["previous"] = str(recorder.previous)
        recorder.campaign(info)
        judges = starting.judges() if starting is not None else backends
        for note in pool.notes if pool is not None else ():
            _say(progress, note)
        pending: deque = deque()  # layers whose judging the cluster has (in layer order)
        in_flight = 0 if cluster is None else IN_FLIGHT * cluster.threads

        def finish(k, c, case, rel, layer, t0, rs) -> None:
            nonlocal done_est, done_s
            layer.seconds = time.perf_counter() - t0
            # one line per layer and backend; a finding's line names the first layer that showed it
            # (a line holds one finding: a layer that shows several new ones repeats its line for each)
            new = [FindingKey(r.backend, name, gr.verdict) for r in rs for name, gr in r.gradients.items()
                   if is_finding(gr.verdict) and FindingKey(r.backend, name, gr.verdict) not in first_seen]
            first_seen.update(new)
            recorder.record(case, rs, "layer", findings=new, case_file=rel)
            layer.results = [r.lightweight() for r in rs]
            done_est += layer.estimate.seconds
            done_s += layer.seconds
            left = sum(costs[x.name].seconds for x in captures[k:] if not x.skipped)
            pace = done_s / done_est if done_est > 0 else 1.0
            _say(progress, f"[{k}/{len(captures)}] {c.name}: {_verdicts_text(layer)} in {layer.seconds:.1f} s; "
                           f"{time.perf_counter() - t_start:.0f} s elapsed, ETA {_eta(left * pace)}")

        for k, c in enumerate(captures, 1):
            if c.skipped:
                _say(progress, f"[{k}/{len(captures)}] {c.name}: skipped: {c.skipped}")
                results.append(LayerResult(c.name, None, skipped=c.skipped))
                continue
            g, cost = c.geometry, costs[c.name]
            case = case_of(c, backends[0].format)
            rel = recorder.keep_case(case, case_filename(c.name), pending=False)  # before its backends run
            _say(progress, f"[{k}/{len(captures)}] {c.name}: {geometry_text(g)}, {g.macs / 1e6:.1f} M MACs "
                           f"(estimated {cost.seconds:.1f} s)")
            layer = LayerResult(c.name, g, str(out / rel), [], 0.0, cost)
            results.append(layer)
            t0 = time.perf_counter()
            c.input = c.grad_output = c.weight = None  # in the case now: free the captured arrays
            if cluster is None:
                rs = check_case(case, judges, max_memory=max_memory, sample=samples[c.name], seed=seed,
                                progress=None if progress is None else (lambda text, n=c.name: progress(f"  {n}: {text}")))
                finish(k, c, case, rel, layer, t0, rs)
                continue
            # the backends run here, the cluster judges; the next layer's backends run meanwhile
            chosen = sample_of(case, samples[c.name], seed)
            runs = [run_backend(b, case) for b in judges]
            pending.append((k, c, case, rel, layer, t0, cluster.submit(case, runs, "exact", chosen)))
            while len(pending) > in_flight:
                *head, job = pending.popleft()
                finish(*head, cluster.collect(job))
        while pending:
            *head, job = pending.popleft()
            finish(*head, cluster.collect(job))
        seconds = time.perf_counter() - t_start
        result = ModelResult(spec, tuple(input_shape), seed, [b.name for b in backends], n_convs, results, seconds,
                             out, capture_s)
        recorder.side_file(MODEL, _model_doc(out, result))
        info.update({"status": "complete", "cases": sum(not r.skipped for r in results), "findings": len(first_seen),
                     "duration_s": round(seconds, 3)})
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        raise
    except BaseException as exc:
        info.update({"status": "crashed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        if pool is not None:
            pool.close()
        if cluster is not None:
            cluster.close()
        try:
            info.setdefault("duration_s", round(time.perf_counter() - t_start, 3))
            info.setdefault("cases", sum(not r.skipped for r in results))
            info.setdefault("findings", len(first_seen))
            recorder.campaign(info)
        finally:
            recorder.close()
    return result


class _Starting(threading.Thread):
    """``pool.wrap(backends)`` in the background: :mod:`difftest.isolation` starts the backends'
    worker processes (importing their libraries, about a second) while the model loads and runs
    forward and backward. :meth:`judges` waits for them, raising what starting raised. The pool is not used
    by anything else meanwhile."""

    def __init__(self, pool, backends):
        super().__init__(name="difftest-start-workers", daemon=True)
        self.pool, self.backends, self.wrapped, self.error = pool, backends, None, None
        self.start()

    def run(self) -> None:
        try:
            self.wrapped = self.pool.wrap(self.backends)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = exc

    def judges(self) -> list:
        self.join()
        if self.error is not None:
            raise self.error
        return self.wrapped


def layer_plan(g: Geometry, formats: int, sample: int | None, max_memory) -> tuple[int | None, Estimate]:
    """How ``difftest model`` judges a layer: with ``sample``, at that sample; else whole, or at
    :data:`~difftest.sampling.DEFAULT_SIZE` where the whole check is above ``max_memory``. The
    sample size (None: whole) and its estimate."""
    full = estimate(g, formats=formats)
    size = sample if sample is not None else (DEFAULT_SIZE if too_large(full, max_memory) else None)
    if size is None or judged_terms(g, size) is None:  # a sample that covers the layer is the full check
        return None, full
    return size, estimate(g, formats=formats, sample=size)


def _verdicts_text(layer: LayerResult) -> str:
    counts: dict[str, int] = {}
    for r in layer.results:
        for gr in r.gradients.values():
            counts[gr.verdict] = counts.get(gr.verdict, 0) + 1
    return ", ".join(f"{v} {n}" for v, n in counts.items())


def _model_doc(out: Path, result: ModelResult) -> dict:
    """``model.json``: the model, its input and every layer (skipped ones with their reason)."""
    return {"model": result.model, "input_shape": list(result.input_shape), "seed": result.seed,
           "convolutions": result.convolutions, "round_inputs": True,
           "layers": [{"name": layer.name, "skipped": layer.skipped,
                       "case_file": None if layer.case_file is None else os.path.relpath(layer.case_file, out),
                       "geometry": None if layer.geometry is None else layer.geometry.as_dict(),
                       "extensions": [] if layer.geometry is None else list(layer.geometry.extensions),
                       "macs": None if layer.geometry is None else layer.geometry.macs,
                       "seconds": layer.seconds} for layer in result.layers]}


# --- words ------------------------------------------------------------------------------------

def table(result: ModelResult, expected: dict | None = None) -> str:
    """The per-layer table: one row per layer and backend, a verdict per gradient and the worst
    ratios; skipped layers with their reason; notes on extensions; where the files are."""
    expected = expected or {}
    short = {"grad_input": "input", "grad_weight": "weight", "grad_bias": "bias"}
    lines = [f"model {result.model}, input {'×'.join(map(str, result.input_shape))}, seed {result.seed}: "
             f"{plural(sum(not x.skipped for x in result.layers), 'layer')} judged of "
             f"{plural(result.convolutions, 'convolution')}"
             + (f", {sum(bool(x.skipped) for x in result.layers)} skipped" if any(x.skipped for x in result.layers) else "")
             + f", {result.seconds:.1f} s"]
    width = max([len(x.name) for x in result.layers] + [5])
    gwidth = max([len(geometry_text(x.geometry)) for x in result.layers if x.geometry is not None] + [8])
    bwidth = max([len(b) for b in result.backends] + [7])
    header = (f"{'layer':<{width}}  {'geometry':<{gwidth}} {'M MACs':>8}  {'backend':<{bwidth}}  "
              + "  ".join(f"{short[g]:<9}" for g in GRADIENTS) + f"  {'max_ratio':>10} {'ratio_of':>10}")
    lines += [header, "-" * len(header)]
    for layer in result.layers:
        if layer.skipped:
            lines.append(f"{layer.name:<{width}}  skipped: {layer.skipped}")
            continue
        for k, r in enumerate(layer.results):
            head = (f"{layer.name:<{width}}  {geometry_text(layer.geometry):<{gwidth}} {layer.geometry.macs / 1e6:>8.2f}"
                    if k == 0 else f"{'':<{width}}  {'':<{gwidth}} {'':>8}")
            cells = []
            for g in GRADIENTS:
                gr = r.gradients.get(g)
                v = "-" if gr is None else (gr.verdict + ("~" if gr.sampled else "")
                                            + ("*" if expected.get((layer.name, r.backend, g)) else ""))
                cells.append(f"{v:<9}")
            worst = max((gr.max_ratio for gr in r.gradients.values()), default=0.0)
            worst_of = max((gr.max_ratio_order_free for gr in r.gradients.values()), default=0.0)
            lines.append(f"{head}  {r.backend:<{bwidth}}  " + "  ".join(cells)
                         + f"  {format_ratio(worst):>10} {format_ratio(worst_of):>10}")
    lines.append("")
    notes: dict[str, list[str]] = {}
    for x in result.layers:
        if x.geometry is not None and x.geometry.extensions:
            notes.setdefault(x.geometry.extension_note(), []).append(x.name)
    for note, names in notes.items():
        lines.append(f"extension ({plural(len(names), 'layer')}: {', '.join(names[:6])}{', …' if len(names) > 6 else ''}): "
                     f"{note}")
    if any(expected.values()):
        lines.append("*: an expected finding (--expected)")
    if any(gr.sampled for x in result.layers for r in x.results for gr in r.gradients.values()):
        lines.append("~: judged at sampled entries (--sample; results.jsonl and the report say how many); "
                     "pass there = no certain violation among them")
    verdicts = [gr.verdict for x in result.layers for r in x.results for gr in r.gradients.values()]
    from .judge.explain import legend

    lines += legend(verdicts)
    lines.append("max_ratio = max |backend - exact| / torchlean bound over the layer's gradients; "
                 "ratio_of = the same against the order-free bound")
    first = next((x for x in result.layers if x.case_file), None)
    if first is not None:
        sampled = next((sampled_of(r.gradients) for r in first.results if r.backend == result.backends[0]), None)
        lines.append(f"case files: {result.out}/cases/ (replay one: "
                     f"{reproduce_command(first.case_file, result.backends[0], sampled=sampled)})")
    return "\n".join(lines)

