"""``difftest bench``: the cost of certifying a layer, stage by stage, against torch's own backward.

Stages on the same case, as :func:`difftest.check.check_case` times them when it judges
``nf-binary32``: the exact spec (sliced exact GEMMs), the NF reference with the TorchLean
bounds (one replay), the order-free bounds, and the comparison of the result with both
(which includes the exact spec's float64 views). torch's float64 backward of the same layer is timed in the same process.
Each figure is the median of ``repeat`` runs after one warm-up run (which loads the compiled
folds); peak memory is the process's peak resident set size.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..values.case import Case
from ..judge.estimate import estimate
from ..values.geometry import Geometry
from ..values.verdicts import VERDICTS


@dataclass(frozen=True)
class Layer:
    """A layer bench times: a name and a geometry."""

    name: str
    geometry: Geometry

    @property
    def macs(self) -> int:
        return self.geometry.macs


def square(name: str, C: int, O: int, H: int, k: int = 3, stride: int = 1, padding: int = 1) -> Layer:
    """A batch-1 layer of ``H × H`` images and a ``k × k`` kernel (the warm-up and scaling cases)."""
    return Layer(name, Geometry(1, C, H, H, O, k, k, stride, padding))


def _catalogued(name: str, layer: str) -> Layer:
    from ..campaigns.catalogue import get_layer

    return Layer(name, get_layer(layer).geometry(1))


#: What ``difftest bench --layer NAME`` times: real layers of the catalogue (:mod:`difftest.catalogue`,
#: the one registry of layers) at their real size, and a small layer for the campaign rate.
BENCH_LAYERS = {
    "resnet50-conv2": _catalogued("resnet50-conv2", "resnet50.layer1.0.conv2"),  # 64 -> 64, 56 × 56, 3 × 3
    "strided": _catalogued("strided", "resnet18.layer2.0.conv1"),  # 64 -> 128, 56 × 56, 3 × 3, stride 2
    "small": square("small", 8, 8, 16),
}


def make_case(layer: Layer, seed: int = 0) -> Case:
    """Normal float32 values (the spec values are binary32)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32).astype(np.float64)  # noqa: E731
    g = layer.geometry
    return Case(r(*g.input_shape), r(*g.weight_shape), r(*g.grad_output_shape), stride=g.stride, padding=g.padding)


#: The pipeline's stages, as its results time them (the ``<stage>_s`` each sums). The NF backend
#: runs before the judging and makes the replay the model then reads from the cache, so the
#: replay's time is in its ``backend_s``: the NF stage is the two together.
STAGES = {"exact_spec": ("exact_s",), "nf_and_torchlean": ("nf_and_torchlean_s", "backend_s"),
          "order_free": ("order_free_s",), "comparison": ("comparison_s",)}


def _median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def torch_backward_seconds(case: Case, repeat: int) -> float | None:
    """torch.nn.functional.conv2d + autograd in float64 on the CPU, on the same layer."""
    try:
        import torch
    except Exception:
        return None
    x = torch.from_numpy(np.array(case.input)).requires_grad_(True)
    w = torch.from_numpy(np.array(case.weight)).requires_grad_(True)
    b = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    d = torch.from_numpy(np.array(case.grad_output))

    def run():
        x.grad = w.grad = b.grad = None
        torch.nn.functional.conv2d(x, w, b, stride=case.stride, padding=case.padding).backward(d)

    run()
    return _median_time(run, max(repeat, 5))[0]


def bench_layer(layer: Layer, repeat: int = 3) -> dict:
    """Stage timings of :func:`difftest.check.check_case` judging ``nf-binary32`` on the layer."""
    from ..maths import replay as replay_mod
    from ..backends import get_backend
    from ..judge.check import check_case

    case, g = make_case(layer), layer.geometry
    nf = get_backend("nf-binary32")
    t0 = time.perf_counter()
    warm = make_case(square("warm", 2, 2, 6))
    check_case(warm, [nf])  # loads (or compiles) the folds
    warmup = time.perf_counter() - t0

    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    result = None
    for _ in range(repeat):
        replay_mod._CACHE.clear()  # measure the computation, not the cache
        (result,) = check_case(case, [nf])
        for k, keys in STAGES.items():
            stages[k].append(sum(result.timings[key] for key in keys))
    seconds = {k: statistics.median(v) for k, v in stages.items()}
    seconds["total"] = sum(seconds.values())
    seconds["warmup"] = warmup
    t_torch = torch_backward_seconds(case, repeat)
    cost = estimate(case.geometry)
    return {
        "layer": layer.name,
        "shape": {"N": g.N, "C": g.C, "O": g.O, "H": g.H, "W": g.W, "k": g.kH, "stride": g.sh, "padding": g.ph},
        "macs_per_gradient": layer.macs,
        "seconds": seconds,
        "torch_float64_backward_s": t_torch,
        "ratio_to_torch": seconds["total"] / t_torch if t_torch else None,
        "nf_verdicts": {k: v.verdict for k, v in result.gradients.items()},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "estimate": {"seconds": cost.seconds, "peak_mib": cost.peak_bytes / 2**20},
        "repeat": repeat,
    }


def campaign_rate(seconds: float = 20.0, backends=("torch-cpu-float32", "nf-binary32"), examples: int | None = None) -> dict:
    """Checked cases per second through a campaign of small cases (<= 8 channels, 16 × 16): for
    ``seconds``, or ``examples`` cases in one round (bounded by work)."""
    import tempfile
    from pathlib import Path

    from ..backends import get_backend
    from ..campaigns.campaign import Campaign, CampaignConfig, Profile
    from ..campaigns.strategies import Limits

    profile = Profile("small", Limits(max_batch=1, max_channels=8, max_size=16, max_kernel=3), examples or 10_000,
                      seconds, 2.0)
    bs = [get_backend(b) for b in backends if get_backend(b).availability()[0]]
    with tempfile.TemporaryDirectory() as d:
        c = Campaign(CampaignConfig(backends=bs, profile=profile, out=Path(d), database=None, progress=False, seed=0,
                                    rounds=1 if examples else None, time_budget=None if examples else seconds))
        t0 = time.perf_counter()
        c.run()
        dt = time.perf_counter() - t0
    return {"backends": [b.name for b in bs], "cases": c.progress.cases, "seconds": dt,
            "cases_per_second": c.progress.cases / dt}


def jobs_speedup(jobs: int | None = None, examples: int = 150, seed: int = 0) -> dict:
    """Wall time of one campaign bounded by work (every available CPU backend, ``examples`` cases
    per format group, one round) in one process and in ``jobs`` processes (default: the cores);
    both search the same cases."""
    import os
    import tempfile
    from pathlib import Path

    from ..campaigns.campaign import Campaign, CampaignConfig, default_backends

    jobs = jobs or os.cpu_count() or 1
    backends = default_backends()
    out = {"backends": [b.name for b in backends], "examples": examples, "jobs": jobs}
    with tempfile.TemporaryDirectory() as d:
        for n in (1, jobs):
            cfg = CampaignConfig(backends=backends, out=Path(d) / f"jobs-{n}", database=None, progress=False,
                                 seed=seed, examples=examples, rounds=1, jobs=n)
            t0 = time.perf_counter()
            c = Campaign(cfg)
            c.run()
            out[f"seconds_jobs_{n}"] = time.perf_counter() - t0
            out["cases"] = c.progress.cases
    out["speedup"] = out["seconds_jobs_1"] / out[f"seconds_jobs_{jobs}"]
    return out


def isolation_cost(examples: int = 150, seed: int = 0, repeat: int = 3) -> dict:
    """What running every backend in a worker process costs (:mod:`difftest.isolation`): the default
    quick campaign (every available CPU backend), bounded by work (``examples`` cases per format
    group, one round, one process), with the backends isolated and in process, ``repeat`` times each
    in alternation after a warm-up (compiled folds, the fork server's imports); both judge the same
    cases. Returns the median seconds and cases per minute of each and their ratio."""
    import statistics
    import tempfile
    from pathlib import Path

    from ..campaigns.campaign import Campaign, CampaignConfig, default_backends

    backends = default_backends()
    runs: dict[bool, list[float]] = {True: [], False: []}
    cases = {}
    with tempfile.TemporaryDirectory() as d:
        def campaign(isolate: bool, n: int, k: int) -> float:
            cfg = CampaignConfig(backends=backends, out=Path(d) / f"{isolate}-{k}", database=None, progress=False,
                                 seed=seed, examples=n, rounds=1, jobs=1, isolate=isolate)
            t0 = time.perf_counter()
            c = Campaign(cfg)
            c.run()
            cases[isolate] = c.progress.cases
            return time.perf_counter() - t0

        campaign(True, 5, -1)  # warm-up: numba's folds compile, the fork server imports the libraries
        campaign(False, 5, -2)
        for k in range(repeat):
            for isolate in (False, True):
                runs[isolate].append(campaign(isolate, examples, k))
    out = {"backends": [b.name for b in backends], "examples": examples, "repeat": repeat, "cases": cases[True]}
    for isolate, name in ((False, "in_process"), (True, "isolated")):
        s = statistics.median(runs[isolate])
        out[f"seconds_{name}"] = s
        out[f"cases_per_minute_{name}"] = 60 * cases[isolate] / s
    out["ratio"] = out["cases_per_minute_isolated"] / out["cases_per_minute_in_process"]
    return out


def first_run(seed: int = 0, extra: tuple = ()) -> dict:
    """The default ``difftest run`` twice with the same seed, each in a fresh process: first with an
    empty numba cache (what a fresh clone's first run meets: the compiled folds compile), then with
    the cache that run left (every later run). Both without an example database (the second would
    replay the first's failures) or a report; ``extra``: more ``run`` arguments. The cases each
    searched, and their ratio."""
    import os
    import subprocess
    import tempfile

    from ..records.store import read_campaign

    out: dict = {"seed": seed, "arguments": list(extra)}
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "NUMBA_CACHE_DIR": str(Path(d) / "numba")}
        for name in ("cold", "warm"):
            target = Path(d) / name
            argv = [sys.executable, "-m", "difftest", "run", "--seed", str(seed), "--out", str(target), "--no-database",
                    "--no-report", "--quiet", "--fail-on", "never", *extra]
            t0 = time.perf_counter()
            r = subprocess.run(argv, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"difftest run exited {r.returncode}: {r.stderr.strip()[-2000:]}")
            info = read_campaign(target)
            out[name] = {"cases": info["cases"], "cases_per_backend": info.get("cases_per_backend") or {},
                         "seconds": time.perf_counter() - t0}
    out["ratio"] = out["cold"]["cases"] / max(out["warm"]["cases"], 1)
    return out


#: What ``difftest bench --layer emulations`` times: each emulation and shape-gated variants of the
#: kinds libraries switch kernels on.
EMULATIONS = ("emu-tf32", "emu-binary16-acc", "emu-bfloat16-acc", "emu-ftz", "emu-rtz-acc", "emu-fft",
              "emu-tf32@min-channels=32", "emu-fft@min-kernel=5", "emu-rtz-acc@min-stride=2",
              "emu-binary16-acc@min-image=16", "emu-bfloat16-acc@min-reduction=500", "emu-ftz@min-channels=64",
              "emu-ftz@min-reduction=577")


def time_to_precision(names=EMULATIONS, seed: int = 0, profile: str = "quick") -> list[dict]:
    """Seconds and draws until a campaign of ``profile`` (its time budget, no shrinking) first
    finds ``precision`` for each emulation alone, stopping there."""
    import tempfile
    from pathlib import Path

    from ..backends import get_backend
    from ..campaigns.campaign import PROFILES, Campaign, CampaignConfig

    out = []
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            c = Campaign(CampaignConfig([get_backend(name)], PROFILES[profile], seed=seed, out=Path(d), database=None,
                                        progress=False, shrink=False, stop_on=frozenset({"precision"})))
            t0 = time.perf_counter()
            c.run()
            elapsed = time.perf_counter() - t0
        first = min((s for k, s in c.first_seen.items() if k.verdict == "precision"), default=None)
        out.append({"backend": name, "seconds": first, "draws": c.draws, "campaign_s": elapsed,
                    "found": c.stopped_on.gradient if c.stopped_on else None, "budget_s": PROFILES[profile].time_budget})
    return out


#: What ``difftest bench --layer fingerprint`` times.
FINGERPRINT_BACKENDS = ("numpy-float32", "torch-cpu-float32", "onnxruntime-cpu-float32")


def fingerprint_times(backends=FINGERPRINT_BACKENDS, layer: str = "resnet50.layer1.0.conv2", size: int = 56) -> list[dict]:
    """Seconds ``difftest fingerprint`` takes per backend at catalogue ``layer`` (``size×size``,
    batch 1): the probing and the evidence files written (into a temporary directory), after one
    warm-up call that loads the library. Backends that cannot run here are left out."""
    import tempfile

    from .. import fingerprint as fp
    from ..backends import get_backend
    from ..backends.base import backward
    from ..campaigns.catalogue import get_layer

    g = get_layer(layer).geometry(1, size)
    out = []
    for name in backends:
        b = get_backend(name)
        if not b.availability()[0]:
            continue
        warm = make_case(square("warm", 2, 2, 6))
        backward(b, warm.input, warm.weight, warm.grad_output, 1, 1)  # loads the library
        t0 = time.perf_counter()
        result = fp.fingerprint(b, g)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            fp.write([result], d)
            t2 = time.perf_counter()
        out.append({"backend": name, "layer": layer, "size": size, "seconds": t2 - t0, "probe_s": t1 - t0,
                    "write_s": t2 - t1, "evidence_files": sum(len(gp.evidence) for gp in result.gradients.values()),
                    "fingerprint": result.to_dict()["gradients"]})
    return out


def scaling(channels=(8, 16, 32, 64, 128), repeat: int = 1) -> list[dict]:
    """Total time against multiply-adds, 56 × 56, 3 × 3, C -> C channels."""
    out = []
    for c in channels:
        r = bench_layer(square(f"c{c}", c, c, 56), repeat)
        out.append({"channels": c, "macs_per_gradient": r["macs_per_gradient"], "total_s": r["seconds"]["total"],
                    "ns_per_mac": 1e9 * r["seconds"]["total"] / r["macs_per_gradient"]})
    return out


def machine() -> dict:
    import os
    import platform

    from ..backends.base import cpu_flags, cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "flags": cpu_flags(), "python": platform.python_version(),
            "numpy": np.__version__}


def print_layer(r: dict, out=None) -> None:
    out = out or sys.stdout
    s = r["seconds"]
    print(f"{r['layer']}: {r['shape']}, {r['macs_per_gradient'] / 1e6:.1f} M multiply-adds per gradient", file=out)
    for k in (*STAGES, "total"):
        print(f"  {k:<18} {s[k]:8.3f} s", file=out)
    if r["torch_float64_backward_s"]:
        print(f"  torch float64 backward {r['torch_float64_backward_s'] * 1e3:.1f} ms -> ratio {r['ratio_to_torch']:.0f}x", file=out)
    print(f"  peak RSS {r['peak_rss_mib']:.0f} MiB; warm-up (compiled folds) {s['warmup']:.2f} s; nf verdicts {r['nf_verdicts']}", file=out)
    e = r["estimate"]
    print(f"  estimated before judging (difftest.estimate): {e['seconds']:.2f} s, {e['peak_mib']:.0f} MiB peak "
          "(the process's RSS above includes the imported libraries)", file=out)


#: The stages of a whole-model check, and how each is counted from its results' ``timings``:
#: the exact spec once per layer, the NF model and bounds once per layer and format, the backend
#: and the comparison once per layer and backend.
MODEL_STAGES = (("exact_spec", "exact_s", "layer"), ("nf_and_torchlean", "nf_and_torchlean_s", "format"),
                ("order_free", "order_free_s", "format"), ("backend", "backend_s", "backend"),
                ("comparison", "comparison_s", "backend"))


def bench_model(spec: str, backends=("torch-cpu-float32",), input_shape=(1, 3, 224, 224), seed: int = 0,
                layers: str | None = None, progress=None, max_memory="auto", sample: int | None = None) -> dict:
    """The cost of ``difftest model``: one whole-model check (every ``nn.Conv2d``, three
    gradients) judged by ``backends``, its stages summed over the layers, its peak memory and
    its ratio to torch's own float64 forward and backward of the whole model in this process.

    Peak memory is the process's peak resident set size (``getrusage`` ``ru_maxrss``): the
    model, the captured arrays, the libraries and the judgement together, over the process's
    life (run it in a fresh process, as ``difftest bench --model`` does)."""
    import tempfile

    from ..backends import get_backend
    from ..model import check_model, load_model, torch_seconds

    bs = [get_backend(b) if isinstance(b, str) else b for b in backends]
    warm = make_case(square("warm", 2, 2, 6))
    from ..judge.check import check_case

    check_case(warm, bs)  # loads (or compiles) the folds and the libraries
    libraries_s = _load_model_libraries()
    with tempfile.TemporaryDirectory() as d:
        result = check_model(spec, bs, input_shape, layers=layers, seed=seed, out=Path(d) / "model", progress=progress,
                             max_memory=max_memory, sample=sample)
    stages = {name: 0.0 for name, _, _ in MODEL_STAGES}
    rows = []
    for layer in result.layers:
        if layer.skipped:
            rows.append({"name": layer.name, "skipped": layer.skipped})
            continue
        formats_seen = set()
        for r in layer.results:
            for name, key, per in MODEL_STAGES:
                if per == "backend" or (per == "format" and r.format not in formats_seen) or \
                        (per == "layer" and r is layer.results[0]):
                    stages[name] += r.timings.get(key, 0.0)
            formats_seen.add(r.format)
        g = layer.geometry
        rows.append({"name": layer.name, "geometry": g.as_dict(), "groups": g.groups, "macs": g.macs,
                     "seconds": layer.seconds, "ns_per_mac": 1e9 * layer.seconds / g.macs,
                     "estimate_s": layer.estimate.seconds if layer.estimate else None})
    judged = [r for r in rows if "skipped" not in r]
    stages["capture"] = result.capture_s
    stages["other"] = max(0.0, result.seconds - result.capture_s - sum(r["seconds"] for r in judged))
    model = load_model(spec, seed)
    t_torch = torch_seconds(model, input_shape, seed)
    return {
        "model": spec,
        "input_shape": list(input_shape),
        "sample": sample,
        "backends": [b.name for b in bs],
        "convolutions": result.convolutions,
        "layers_judged": len(judged),
        "macs_per_gradient": sum(r["macs"] for r in judged),
        "seconds": {**stages, "total": result.seconds},
        "libraries_loaded_before_s": libraries_s,
        "estimate_s": sum(r["estimate_s"] or 0.0 for r in judged),
        "torch_float64_forward_backward_s": t_torch,
        "ratio_to_torch": result.seconds / t_torch if t_torch else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_memory_source": "getrusage(RUSAGE_SELF).ru_maxrss: the process's peak resident set size",
        "verdicts": {v: sum(gr.verdict == v for x in result.layers for r in x.results for gr in r.gradients.values())
                     for v in VERDICTS},
        "layers": rows,
    }


def _load_model_libraries() -> float:
    """Seconds importing torchvision took (0 where it is not installed: a model of another package
    then loads its own): like the compiled folds the warm-up case loads, a once-per-process cost
    ``difftest model`` pays before its first layer, timed apart from the stages."""
    t0 = time.perf_counter()
    try:
        from ..model import import_torchvision

        import_torchvision()
    except Exception:  # noqa: BLE001 - check_model reports it properly
        return 0.0
    return time.perf_counter() - t0


def command_cost(argv: list[str], poll: float = 0.05) -> dict:
    """Wall seconds, exit code and peak memory of a command in a fresh process: the resident set
    sizes of its whole process tree (the command and its backend workers) summed, read from
    ``/proc`` every ``poll`` seconds (Linux; elsewhere the largest single process's, from
    ``getrusage``)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(poll)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"argv": argv, "seconds": seconds, "returncode": proc.returncode, "stdout": out, "stderr": err,
            "peak_rss_mib": max(peak, children) / 2**20,
            "peak_memory_source": "the process tree's resident set sizes summed, read from /proc every "
                                  f"{poll:g} s (at least the largest process's getrusage ru_maxrss)"}


def _tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and its descendants now (0 where /proc cannot tell)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


#: The real-shape layer of ``difftest bench --layer sampled``: pytorch#163539's 16 -> 16 channels at
#: 1282 × 722 (2.1 G multiply-adds per gradient), a 3 × 3 kernel.
SAMPLED_LAYER = Geometry(1, 16, 1282, 722, 16, 3, 3, 1, 1)


def sampled_check(n: int = 20000, backend: str = "torch-cpu-float32", seed: int = 0) -> dict:
    """``difftest check`` of :data:`SAMPLED_LAYER` (normal binary32 values) with ``--sample n``,
    as a user runs it (a fresh process, the backend in its worker): wall seconds and peak memory
    (:func:`command_cost`), and what it judged."""
    import json
    import tempfile

    g = SAMPLED_LAYER
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(seed)
        r = lambda *s: rng.standard_normal(s).astype(np.float32).astype(np.float64)  # noqa: E731
        case = Case(r(*g.input_shape), r(*g.weight_shape) * 0.125, r(*g.grad_output_shape) * 2.0**-4, stride=g.stride,
                    padding=g.padding)
        path = case.save(Path(d) / "layer.npz")
        cost = command_cost([sys.executable, "-m", "difftest", "check", str(path), "--backend", backend,
                             "--sample", str(n), "--seed", str(seed), "--json"])
    if cost["returncode"] not in (0, 1):
        raise RuntimeError(f"difftest check exited {cost['returncode']}: {cost['stderr'].strip()[-2000:]}")
    doc = json.loads(cost.pop("stdout"))
    result = doc["results"][0]
    return {**cost, "geometry": g.as_dict(), "macs_per_gradient": g.macs, "backend": backend, "sample": n,
            "verdicts": {k: v["verdict"] for k, v in result["gradients"].items()},
            "sampled": {k: v.get("sampled") for k, v in result["gradients"].items()}}


def measure(layer: str = "resnet50-conv2", model: str | None = None, backends=None, input_shape=None,
            layers: str | None = None, max_memory="auto", sample: int | None = None, seed: int = 0, repeat: int = 3,
            campaign_seconds: float = 20.0, campaign_examples: int | None = None, progress=None) -> dict:
    """What ``difftest bench`` measures, as its ``--json`` object: the machine, then ``model``'s
    whole check (:func:`bench_model`) where a model is named, else the measurement ``layer`` names
    (a layer of :data:`BENCH_LAYERS`, ``scaling``, ``jobs``, ``isolation``, ``emulations``,
    ``first-run``, ``sampled`` or ``fingerprint``)."""
    doc: dict = {"machine": machine()}
    if model is not None:
        doc["model"] = bench_model(model, backends or ("torch-cpu-float32",), input_shape or (1, 3, 224, 224), seed=seed,
                                   layers=layers, max_memory=max_memory, progress=progress, sample=sample)
    elif layer in BENCH_LAYERS:
        doc["layer"] = bench_layer(BENCH_LAYERS[layer], repeat)
        if layer == "small":
            doc["campaign"] = campaign_rate(campaign_seconds, examples=campaign_examples)
    elif layer == "scaling":
        doc["scaling"] = scaling(repeat=repeat)
    elif layer == "jobs":
        doc["jobs"] = jobs_speedup()
    elif layer == "isolation":
        doc["isolation"] = isolation_cost(examples=campaign_examples or 150, repeat=repeat)
    elif layer == "emulations":
        doc["emulations"] = time_to_precision(seed=seed)
    elif layer == "first-run":
        doc["first_run"] = first_run(seed=seed)
    elif layer == "sampled":
        name = (backends or ["torch-cpu-float32"])[0]
        doc["sampled"] = sampled_check(sample or 20000, name if isinstance(name, str) else name.name, seed)
    elif layer == "fingerprint":
        doc["fingerprint"] = fingerprint_times()
    return doc


def print_doc(doc: dict, out=None) -> None:
    """``difftest bench``'s words for what it measured (``doc``: its ``--json`` object)."""
    from ..judge.explain import plural
    from ..judge.sampling import sample_text

    out = out or sys.stdout
    say = lambda *args: print(*args, file=out)  # noqa: E731
    if "model" in doc:
        print_model(doc["model"], out)
    if "layer" in doc:
        print_layer(doc["layer"], out)
    if "campaign" in doc:
        c = doc["campaign"]
        say(f"campaign of small cases ({', '.join(c['backends'])}): {plural(c['cases'], 'case')} in {c['seconds']:.1f} s "
            f"= {c['cases_per_second']:.1f} cases/s")
    if "jobs" in doc:
        j = doc["jobs"]
        say(f"campaign bounded by work ({plural(len(j['backends']), 'backend')}, {j['examples']} examples per format, "
            f"{plural(j['cases'], 'case')}): {j['seconds_jobs_1']:.1f} s in one process, "
            f"{j['seconds_jobs_' + str(j['jobs'])]:.1f} s with --jobs {j['jobs']}: speed-up {j['speedup']:.2f}x")
    if "isolation" in doc:
        i = doc["isolation"]
        say(f"quick campaign bounded by work ({plural(len(i['backends']), 'backend')}, {i['examples']} examples per "
            f"format, {plural(i['cases'], 'case')}, median of {i['repeat']}): in process {i['seconds_in_process']:.1f} s "
            f"= {i['cases_per_minute_in_process']:.0f} cases/min; each backend in a worker "
            f"{i['seconds_isolated']:.1f} s = {i['cases_per_minute_isolated']:.0f} cases/min ({i['ratio']:.2f}x)")
    if "first_run" in doc:
        f = doc["first_run"]
        say(f"difftest run --seed {f['seed']}: first run (empty numba cache) {plural(f['cold']['cases'], 'case')} in "
            f"{f['cold']['seconds']:.0f} s, next run {plural(f['warm']['cases'], 'case')} in {f['warm']['seconds']:.0f} s: "
            f"{100 * f['ratio']:.0f} %")
        for name in f["warm"]["cases_per_backend"]:
            say(f"  {name:<26} {f['cold']['cases_per_backend'].get(name, 0):>6} {f['warm']['cases_per_backend'][name]:>6}")
    if "sampled" in doc:
        r = doc["sampled"]
        g = r["geometry"]
        say(f"difftest check of a {g['N']}×{g['C']}×{g['H']}×{g['W']}, {g['kH']}×{g['kW']} layer "
            f"({r['macs_per_gradient'] / 1e9:.1f} G multiply-adds per gradient) with --sample {r['sample']}, "
            f"{r['backend']}: {r['seconds']:.1f} s wall, peak {r['peak_rss_mib'] / 1024:.2f} GiB ({r['peak_memory_source']})")
        for name, sm in r["sampled"].items():
            say(f"  {r['verdicts'][name]:<10} {sample_text(name, sm) if sm else name + ': every entry judged'}")
    for row in doc.get("emulations", []):
        when = (f"first precision ({row['found']}) after {row['seconds']:.1f} s, {plural(row['draws'], 'draw')}"
                if row["found"] else f"no precision within the {row['budget_s']:g} s budget ({plural(row['draws'], 'draw')})")
        say(f"{row['backend']:<38} {when}")
    for row in doc.get("fingerprint", []):
        say(f"{row['backend']:<26} fingerprint {row['seconds']:6.2f} s ({row['probe_s']:.2f} s probing, "
            f"{row['write_s']:.2f} s writing {row['evidence_files']} evidence files) at {row['layer']}, "
            f"{row['size']}x{row['size']}")
    for row in doc.get("scaling", []):
        say(f"C = {row['channels']:>3}: {row['macs_per_gradient'] / 1e6:8.1f} M MACs  {row['total_s']:7.3f} s  "
            f"{row['ns_per_mac']:.2f} ns/MAC")


def print_model(r: dict, out=None) -> None:
    out = out or sys.stdout
    s = r["seconds"]
    print(f"{r['model']} at {'×'.join(map(str, r['input_shape']))}: {r['layers_judged']} of {r['convolutions']} "
          f"convolutions judged by {', '.join(r['backends'])}, {r['macs_per_gradient'] / 1e9:.2f} G multiply-adds per "
          "gradient, three gradients", file=out)
    width = max([len(x["name"]) for x in r["layers"]] + [5])
    print(f"  {'layer':<{width}} {'groups':>6} {'M MACs':>9} {'seconds':>8} {'ns/MAC':>8} {'estimate':>9}", file=out)
    for x in r["layers"]:
        if "skipped" in x:
            print(f"  {x['name']:<{width}} skipped: {x['skipped']}", file=out)
            continue
        print(f"  {x['name']:<{width}} {x['groups']:>6} {x['macs'] / 1e6:>9.2f} {x['seconds']:>8.3f} "
              f"{x['ns_per_mac']:>8.1f} {x['estimate_s']:>8.2f}s", file=out)
    print("  stages (summed over the layers):", file=out)
    for k in (*(name for name, _, _ in MODEL_STAGES), "capture", "other", "total"):
        print(f"    {k:<18} {s[k]:8.2f} s", file=out)
    if r.get("libraries_loaded_before_s"):
        print(f"  (torchvision imported before the clock, once per process: {r['libraries_loaded_before_s']:.2f} s)", file=out)
    if r["torch_float64_forward_backward_s"]:
        print(f"  torch float64 forward+backward of the whole model {r['torch_float64_forward_backward_s'] * 1e3:.1f} ms "
              f"-> ratio {r['ratio_to_torch']:.0f}x", file=out)
    print(f"  peak RSS {r['peak_rss_mib']:.0f} MiB (getrusage ru_maxrss: the whole process); estimated before judging "
          f"{r['estimate_s']:.1f} s; verdicts {', '.join(f'{k} {v}' for k, v in r['verdicts'].items() if v)}", file=out)
