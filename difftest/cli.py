"""The ``difftest`` command line: arguments, settings and printing over the library's faces
(:mod:`difftest.check`, :mod:`difftest.campaign`, :mod:`difftest.model`, :mod:`difftest.fingerprint`,
:mod:`difftest.store`, :mod:`difftest.report`, :mod:`difftest.bench`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from . import __version__
from .case import Case
from .errors import DifftestError, os_error_text, os_reason
from .explain import plural
from .config import PROFILE_NAMES
from .formats import PRESETS
from .isolation import DEFAULT_TIMEOUT
from .store import REPORT
from .supports import Supports
from .geometry import GRADIENTS
from .outcome import jsonable
from .verdicts import FAIL_ON, FAIL_ON_HELP, FINDINGS, is_finding

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROFILE_CHOICES = PROFILE_NAMES


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"difftest: error: {message}\n")


# --- environment: paths to write, errors to explain ------------------------------------------------



def _prepare_dir(path, what: str) -> Path:
    """The output directory ``path`` (named ``what`` in errors), created if missing and writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DifftestError(f"{what} {p} is a file, not a directory; give a directory (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DifftestError(f"{what} {p}: cannot create this directory: {os_reason(exc)}") from exc
    if not os.access(p, os.W_OK | os.X_OK):
        raise DifftestError(f"{what} {p} is not writable; fix its permissions or choose another directory")
    return p


def _prepare_file(path, what: str) -> Path:
    """The output file ``path``: not a directory, its directory created if missing and writable."""
    p = Path(path)
    if p.is_dir():
        raise DifftestError(f"{what} {p} is a directory; give a file path")
    _prepare_dir(p.parent if str(p.parent) else Path("."), f"{what} {p}: its directory")
    return p


def _load_case(args) -> Case:
    return Case.load(args.case, format=getattr(args, "format", None), round_inputs=args.round_inputs or None,
                     gradients=_gradients(args))


def _gradients(args) -> tuple[str, ...] | None:
    """``check --gradients``: the requested gradients, overriding the case file's (None: the file's)."""
    from .geometry import gradient_subset

    text = getattr(args, "gradients", None)
    if text is None:
        return None
    try:
        return gradient_subset(text)
    except DifftestError as exc:
        raise DifftestError(f"--gradients {text}: {exc}") from None


def _at_least_one(what: str):
    """An argparse ``type``: a whole number >= 1 (``what`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"takes a whole number of {what} >= 1, got {text!r}")
        return n
    return parse


def _seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"takes a number of seconds > 0, got {text!r}")
    return v


_sample_size = _at_least_one("entries")


def _sample(args, cfg) -> int | None:
    """--sample, DIFFTEST_SAMPLE or [tool.difftest] sample; None: judge every entry."""
    return cfg.resolve("sample", args.sample)


def _scheduler(args, cfg) -> str | None:
    """--scheduler, DIFFTEST_SCHEDULER or [tool.difftest] scheduler; None: judge in this process."""
    return cfg.resolve("scheduler", args.scheduler)


def _config():
    """``[tool.difftest]`` of the nearest pyproject.toml and the DIFFTEST_* variables."""
    from . import config

    cfg = config.load()
    for note in cfg.notes:
        print(f"difftest: note: {note}", file=sys.stderr)
    return cfg


def _max_memory(args):
    """--max-memory in bytes; "auto" (the default) is a safe share of this machine's memory."""
    from .estimate import parse_size

    return "auto" if args.max_memory in (None, "auto") else parse_size(args.max_memory)


def _expectations(args, cfg):
    """The expected findings named by --expected, DIFFTEST_EXPECTED or [tool.difftest] expected."""
    from .expectations import Expectations

    path = cfg.resolve("expected", args.expected)
    return Expectations.load(path) if path else Expectations()


def _fail_on(args, cfg) -> str:
    return cfg.resolve("fail_on", args.fail_on)


def _available_backends(names: list[str]) -> list:
    """The named backends (a spec ``MODULE:ATTR`` may name several); one that cannot run here is a
    usage error saying why."""
    from .backends import backends_named

    backends = [b for n in names for b in backends_named(n)]
    for b in backends:
        ok, reason = b.availability()
        if not ok:
            raise DifftestError(f"backend {b.name} is not available here: {reason}")
    return backends


def _backend_timeout(args, cfg) -> float:
    """--backend-timeout, DIFFTEST_BACKEND_TIMEOUT, [tool.difftest] backend_timeout, else the default."""
    return cfg.resolve("backend_timeout", args.backend_timeout)


@contextlib.contextmanager
def _judges(backends: list, args, cfg):
    """The backends as the command runs them: each in a worker process (difftest.isolation), or in
    this one with --no-isolate. The workers end with the command."""
    if args.no_isolate:
        yield backends
        return
    from .isolation import Workers

    with Workers(_backend_timeout(args, cfg)) as pool:
        wrapped = pool.wrap(backends)
        for note in pool.notes:
            print(f"difftest: note: {note}", file=sys.stderr)
        yield wrapped


def _say(text: str) -> None:
    """A progress line on stderr."""
    print(f"difftest: {text}", file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    from .check import check_case

    cfg = _config()
    fail_on, expectations = _fail_on(args, cfg), _expectations(args, cfg)
    case = _load_case(args)
    backends = _available_backends(args.backend)
    out = _prepare_dir(args.save, "--save") if args.save else None
    with _judges(backends, args, cfg) as judges:
        results = check_case(case, judges, oracle=args.oracle, max_memory=_max_memory(args), progress=_say,
                             sample=_sample(args, cfg), seed=args.seed)
    if out is not None:
        for r in results:
            if r.outputs is not None:
                np.savez(out / f"{r.backend}.npz", **r.outputs)
    geometry = case.geometry.as_dict()
    expected = {(r.backend, g): expectations.explain(r.backend, g, gr.verdict, r.format, geometry)
                for r in results for g, gr in r.gradients.items() if is_finding(gr.verdict)}
    code = EXIT_FINDING if any(expectations.fails_result(r.backend, g, gr.verdict, r.format, geometry, fail_on)
                               for r in results for g, gr in r.gradients.items()) else EXIT_OK
    args.exit_code = code  # the outcome, also if the reader of stdout goes away
    if args.json:
        doc = {"case": {"path": str(args.case), **case.describe()}, "results": [r.to_dict() for r in results]}
        print(json.dumps(jsonable(doc), indent=2))
    else:
        from .summary import check_table

        print("\n".join(check_table(case, results, expected)))
    return code


def cmd_bounds(args) -> int:
    from .check import bounds_arrays

    case = _load_case(args)
    out = _prepare_file(args.out, "--out")
    arrays = bounds_arrays(case, oracle=args.oracle, max_memory=_max_memory(args), sample=_sample(args, _config()),
                           seed=args.seed)
    with open(out, "wb") as f:
        np.savez(f, **arrays, format=np.str_(case.format.name), batch_extension=np.bool_(case.geometry.N > 1),
                 extensions=np.array(case.geometry.extensions, dtype=str))
    sampled = any(f"{g}_index" in arrays for g in case.gradients)
    names = "exact,nf,bound,bound_order_free" + (",index" if sampled else "")
    print(f"wrote {out}: " + ", ".join(f"{g}_{{{names}}}" for g in case.gradients))
    for g in case.gradients:
        judged = (f", sampled: {arrays[g + '_index'].size:,} / {int(np.prod(case.geometry.shape_of(g))):,} entries"
                  if sampled else "")
        print(f"  {g:<12} linf torchlean bound {arrays[g + '_bound'].max():.6g}, "
              f"order-free {arrays[g + '_bound_order_free'].max():.6g}{judged}")
    if case.geometry.extensions:
        print(f"note: {case.geometry.extension_note()}")
    return EXIT_OK


def cmd_backends(args) -> int:
    from .backends import all_backends
    from .check import supports_of

    rows = []
    for b in all_backends().values():
        ok, reason = b.availability()
        takes = supports_of(b)
        rows.append({"name": b.name, "available": ok, "reason": reason, "format": b.format.name,
                     "device": b.device, "version": b.version() if ok else "", "accumulation": b.accumulation,
                     "supports": dataclasses.asdict(takes)})
    if args.json:
        print(json.dumps({"backends": rows}, indent=2))
        return EXIT_OK
    print(f"{'backend':<24} {'format':<9} {'device':<6} {'available':<9}  notes")
    for r in rows:
        notes = r["accumulation"] if r["available"] else r["reason"]
        left_out = Supports(**r["supports"]).label
        notes += f"; takes {left_out}" if left_out else ""
        print(f"{r['name']:<24} {r['format']:<9} {r['device']:<6} {'yes' if r['available'] else 'no':<9}  {notes}")
    print("\nAny emu-* name takes a shape gate, as libraries switch kernels by shape: emu-tf32@min-channels=32 "
          "computes like emu-tf32 where both channel counts are >= 32, like numpy-float32 elsewhere; emu-blocked-L "
          "takes any block length L >= 2 (README: Backends).")
    return EXIT_OK


def cmd_run(args) -> int:
    from .campaign import PROFILES, Campaign, CampaignConfig, default_backends, parse_shard

    cfg = _config()
    if args.backend:
        backends = _available_backends(args.backend)
    elif "backends" in cfg:
        try:
            backends = _available_backends(cfg.get("backends"))
        except DifftestError as exc:
            raise DifftestError(f"{cfg.source('backends')}: {exc}") from None
    else:
        backends = default_backends()
    profile, time_budget, seed = (cfg.resolve(k, v) for k, v in (("profile", args.profile),
                                                                 ("time_budget", args.time_budget), ("seed", args.seed)))
    fail_on = _fail_on(args, cfg)
    expectations = _expectations(args, cfg)
    out = Path(cfg.resolve("out", args.out))
    database = None if args.no_database else cfg.resolve("database", args.database)
    database = None if database is None else Path(database)
    shard = parse_shard(args.shard)
    _prepare_dir(out, "--out")
    junit = _prepare_file(args.junit, "--junit") if args.junit else None
    config = CampaignConfig(
        backends=backends,
        profile=PROFILES[profile],
        examples=args.examples,
        time_budget=time_budget,
        seed=seed,
        shard=shard,
        out=out,
        database=database,
        progress=not args.quiet,
        rounds=args.rounds,
        expectations=expectations,
        jobs=args.jobs or os.cpu_count() or 1,
        shrink=not args.no_shrink,
        stop_on=frozenset(args.stop_on or ()),
        isolate=not args.no_isolate,
        backend_timeout=_backend_timeout(args, cfg),
        overwrite=args.overwrite,
        scheduler=_scheduler(args, cfg),
    )
    campaign = Campaign(config)
    if not args.quiet:
        sources = cfg.sources()
        print(f"difftest run: profile {profile} ({PROFILES[profile].description}), {plural(len(backends), 'backend')} "
              f"({', '.join(b.name for b in backends)}), "
              + (f"budget {campaign.budget:g}s" if math.isfinite(campaign.budget) else "no time budget (bounded by --rounds)")
              + f", seed {seed}, shard {args.shard}, {plural(min(config.jobs, len(campaign.groups(backends))), 'job')} "
              f"-> {out}" + (f"; settings from {', '.join(sources)}" if sources else ""),
              file=sys.stderr)
    interrupted, failure = False, None
    try:
        campaign.run()
    except KeyboardInterrupt:
        interrupted = True
    except (DifftestError, OSError) as exc:  # the campaign itself failed: report what it wrote, then say why
        if campaign.recorder is None:
            raise  # nothing was written (the directory is in use, cannot be created, ...)
        failure = exc
    if campaign.recorder is not None and campaign.recorder.previous is not None and not args.quiet:
        print(f"difftest: the previous results in {out} are kept in {campaign.recorder.previous}", file=sys.stderr)
    if args.fingerprint and not interrupted and failure is None:
        _fingerprint_into(backends, None, config.out, args, cfg, quiet=args.quiet)  # the report's "what each computes"
    try:
        code = _campaign_outputs(args, config, fail_on, expectations, junit, interrupted, profile, seed)
    except (DifftestError, OSError):
        if failure is not None:  # writing the report failed too (a full disk): the campaign's error is the one
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return code


def _campaign_outputs(args, config, fail_on: str, expectations, junit, interrupted: bool, profile, seed) -> int:
    """After a campaign: its exit code, report, JUnit file, then the summary (files first: a closed
    stdout loses no file)."""
    from .results import cases_per_backend, exit_code
    from .store import read_campaign, read_results
    from .summary import format_summary, junit_xml, summary_doc

    records = read_results(config.out)
    info = read_campaign(config.out)
    code = EXIT_INTERRUPTED if interrupted else exit_code(records, fail_on, expectations)
    args.exit_code = code
    report = None
    if not args.no_report:
        from .report import render

        report = render([config.out], config.out / REPORT)
    if junit is not None:
        junit.write_text(junit_xml(records, fail_on, replay_dir=config.out, duration_s=info.get("duration_s") or 0.0,
                                   properties={"profile": profile, "seed": seed, "shard": args.shard,
                                               "fail_on": fail_on, "status": info.get("status") or "?"},
                                   expectations=expectations),
                         encoding="utf-8")
    if args.json:
        doc = {"status": info.get("status") or "?", "cases": info.get("cases") or 0,
               "cases_per_backend": info.get("cases_per_backend") or cases_per_backend(records),
               "duration_s": info.get("duration_s") or 0.0, "out": str(config.out),
               **summary_doc(records, replay_dir=config.out, expectations=expectations), "exit_code": code,
               "report": None if report is None else str(report), "junit": None if junit is None else str(junit)}
        print(json.dumps(jsonable(doc), indent=2))
        return code
    print(format_summary(records, replay_dir=config.out, expectations=expectations))
    searched = info.get("cases_per_backend") or cases_per_backend(records)
    if searched:
        print("\ncases per backend: " + ", ".join(f"{b} {n}" for b, n in searched.items()))
    print(f"\n{info.get('status') or '?'}: {plural(info.get('cases') or 0, 'case')} in {info.get('duration_s') or 0:.1f}s; "
          f"results in {config.out}/results.jsonl")
    if report is not None:
        print(f"report: {report}")
    if junit is not None:
        print(f"junit: {junit}")
    return code


def cmd_report(args) -> int:
    from .report import render

    dirs = [Path(d) for d in args.dirs]
    out = _prepare_file(args.output, "-o") if args.output else dirs[0] / REPORT
    from .expectations import Expectations

    render(dirs, out, baseline=Path(args.baseline) if args.baseline else None,
           expectations=Expectations.load(args.expected) if args.expected else None)
    args.exit_code = EXIT_OK
    print(f"wrote {out}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import bench

    if args.repeat < 1:
        raise DifftestError("--repeat must be >= 1")
    doc: dict = {"machine": bench.machine()}
    if args.model is not None:
        from . import model as mdl

        shape = mdl.parse_input_shape(args.input_shape) if args.input_shape is not None else mdl.DEFAULT_INPUT_SHAPE
        backends = _available_backends(args.backend or ["torch-cpu-float32"])
        doc["model"] = bench.bench_model(args.model, backends, shape, seed=args.seed, layers=args.layers,
                                         max_memory=_max_memory(args), progress=_say, sample=args.sample)
    elif args.layer in bench.BENCH_LAYERS:
        doc["layer"] = bench.bench_layer(bench.BENCH_LAYERS[args.layer], args.repeat)
        if args.layer == "small":
            doc["campaign"] = bench.campaign_rate(args.campaign_seconds, examples=args.campaign_examples)
    elif args.layer == "scaling":
        doc["scaling"] = bench.scaling(repeat=args.repeat)
    elif args.layer == "jobs":
        doc["jobs"] = bench.jobs_speedup()
    elif args.layer == "isolation":
        doc["isolation"] = bench.isolation_cost(examples=args.campaign_examples or 150, repeat=args.repeat)
    elif args.layer == "emulations":
        doc["emulations"] = bench.time_to_precision(seed=args.seed)
    elif args.layer == "first-run":
        doc["first_run"] = bench.first_run(seed=args.seed)
    elif args.layer == "sampled":
        doc["sampled"] = bench.sampled_check(args.sample or 20000, (args.backend or ["torch-cpu-float32"])[0], args.seed)
    elif args.layer == "fingerprint":
        doc["fingerprint"] = bench.fingerprint_times()
    if args.json:
        print(json.dumps(jsonable(doc), indent=2))
        return EXIT_OK
    bench.print_doc(doc)
    return EXIT_OK


def cmd_model(args) -> int:
    import re

    from . import model as mdl
    from .campaign import default_backends

    cfg = _config()
    fail_on, expectations = _fail_on(args, cfg), _expectations(args, cfg)
    shape = mdl.parse_input_shape(args.input_shape) if args.input_shape is not None else mdl.DEFAULT_INPUT_SHAPE
    if args.layers is not None:
        try:
            re.compile(args.layers)
        except re.error as exc:
            raise DifftestError(f"--layers {args.layers!r} is not a valid regular expression: {exc}") from None
    backends = _available_backends(args.backend) if args.backend else default_backends()
    out = _prepare_dir(args.out if args.out is not None else Path("reports/model") / mdl.model_label(args.model), "--out")
    result = mdl.check_model(args.model, backends, shape, layers=args.layers, seed=args.seed, out=out,
                             max_memory=_max_memory(args), progress=_say, expectations=expectations,
                             sample=_sample(args, cfg), scheduler=_scheduler(args, cfg),
                             isolate=not args.no_isolate, backend_timeout=_backend_timeout(args, cfg),
                             overwrite=args.overwrite)
    expected = {(layer.name, r.backend, g): expectations.explain(r.backend, g, gr.verdict, r.format, layer.geometry.as_dict())
                for layer in result.layers for r in layer.results for g, gr in r.gradients.items() if is_finding(gr.verdict)}
    code = EXIT_FINDING if any(expectations.fails_result(r.backend, g, gr.verdict, r.format, layer.geometry.as_dict(),
                                                         fail_on)
                               for layer in result.layers for r in layer.results
                               for g, gr in r.gradients.items()) else EXIT_OK
    args.exit_code = code
    report = None
    if not args.no_report:
        from .report import render

        report = render([out], out / REPORT, expectations=expectations if expectations.entries else None)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return code
    print(mdl.table(result, expected))
    if report is not None:
        print(f"report: {report}")
    return code


def _fingerprint_into(backends: list, geometry, out: Path, args, cfg, quiet: bool = False) -> tuple[list, list]:
    """Fingerprint each backend (each in its worker) into ``out``; a backend that crashes or hangs
    while probed is left out, with the reason. Returns the fingerprints and the failures."""
    from . import fingerprint as fp
    from .errors import BackendCrashed, BackendTimedOut

    prints, failed = [], []
    g = geometry if geometry is not None else fp.default_geometry()
    with _judges(backends, args, cfg) as judges:
        for b in judges:
            if not quiet:
                _say(f"fingerprinting {b.name} at input {g.input_shape}, weight {g.weight_shape}, {g.text()}")
            try:
                prints.append(fp.fingerprint(b, g))
            except (BackendCrashed, BackendTimedOut) as exc:
                failed.append((b.name, str(exc)))
                print(f"difftest: {b.name} was not fingerprinted: {exc} while probed", file=sys.stderr)
    fp.write(prints, out, failed)
    return prints, failed


def cmd_fingerprint(args) -> int:
    from . import fingerprint as fp

    if args.geometry is not None and args.layer is not None:
        raise DifftestError("give --geometry or --layer, not both")
    if args.geometry is not None:
        geometry = fp.parse_geometry(args.geometry)
    elif args.layer is not None:
        geometry = fp.layer_geometry(args.layer)
    else:
        geometry = fp.default_geometry()
    cfg = _config()
    backends = _available_backends(args.backend)
    out = _prepare_dir(args.out, "--out")
    prints, failed = _fingerprint_into(backends, geometry, out, args, cfg)
    code = EXIT_FINDING if failed else EXIT_OK
    args.exit_code = code
    if args.json:  # what fingerprints.json holds (evidence paths relative to out)
        print(json.dumps(fp.to_json(prints, out, failed), indent=2))
        return code
    print(fp.table(prints))
    for name, why in failed:
        print(f"{name:<24} not fingerprinted: {why}")
    print(f"\nevidence cases (replay with difftest check) and fingerprints.json in {out}")
    return code


def cmd_merge(args) -> int:
    from .results import exit_code
    from .store import merge, read_expected, read_results
    from .summary import format_summary

    cfg = _config()
    fail_on = _fail_on(args, cfg)
    out = Path(args.out)
    merged = merge([Path(d) for d in args.dirs], out, overwrite=args.overwrite)
    if merged.previous is not None:
        print(f"difftest: the previous results in {out} are kept in {merged.previous}", file=sys.stderr)
    expectations = _expectations(args, cfg) if (args.expected or cfg.get("expected")) else read_expected(out)
    records = read_results(out)
    code = exit_code(records, fail_on, expectations)
    args.exit_code = code
    report = None
    if not args.no_report:
        from .report import render

        report = render([out], out / REPORT, expectations=expectations if expectations.entries else None)
    print(format_summary(records, replay_dir=out, expectations=expectations))
    print(f"\nmerged {plural(len(args.dirs), 'directory', 'directories')}: {plural(merged.lines, 'result line')}, "
          f"{plural(merged.findings, 'finding')} -> {out}")
    if report is not None:
        print(f"report: {report}")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="difftest",
        description="Put Conv2D backward of real backends on trial against TorchLean's certified NF error bounds.",
        epilog="Exit codes: 0 all pass, 1 a finding (a verdict other than pass), 2 usage, input or environment "
               "error, 130 interrupted. run and check read settings from [tool.difftest] in pyproject.toml and "
               "DIFFTEST_* variables (see the README, Configuration).",
    )
    p.add_argument("-V", "--version", action="version", version=f"difftest {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (for bug reports)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (for bug reports)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    def isolation_args(sp):
        sp.add_argument("--backend-timeout", type=_seconds, metavar="SECONDS", default=None,
                        help="seconds one backend call may take before its worker is killed and the verdict is error "
                             "(default: DIFFTEST_BACKEND_TIMEOUT, [tool.difftest] backend_timeout, else "
                             f"{DEFAULT_TIMEOUT:g})")
        sp.add_argument("--no-isolate", action="store_true",
                        help="run the backends in this process, not in worker processes (for debugging: a backend "
                             "that crashes or hangs then takes difftest with it)")

    def scheduler_arg(sp, what: str):
        sp.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help=f"send the judging of {what} to the Dask scheduler at ADDRESS (tcp://HOST:8786; the "
                             "dask extra); the backends run here and the results are written here")

    def overwrite_arg(sp):
        sp.add_argument("--overwrite", action="store_true",
                        help="replace the results already in the output directory (default: keep them as "
                             "<DIR>.previous, replacing an older .previous)")

    def case_args(sp):
        sp.add_argument("case", help="case file (.npz with input, weight, grad_output, stride, padding[, dilation, "
                        "groups, format, eps_*]; stride, padding, dilation: an integer or [h, w])")
        sp.add_argument("--round-inputs", action="store_true",
                        help="round values not representable in a format into it, and add the exact maximal "
                             "rounding error of each tensor to its eps (otherwise such values are an error)")
        sp.add_argument("--max-memory", metavar="SIZE",
                        help="refuse a case whose estimated peak memory is above SIZE (8G, 512M, bytes; default "
                             "auto: 60%% of this machine's memory); the estimate is in the message")
        sp.add_argument("--oracle", default="exact", choices=["exact", "mpmath"],
                        help="exact-spec oracle: 'exact' (fast, sliced GEMMs) or 'mpmath' (the slow reference)")
        sample_arg(sp, "")
        sp.add_argument("--seed", type=int, default=0, help="seed of the sampled entries (default 0)")

    def sample_arg(sp, more: str):
        sp.add_argument("--sample", type=_sample_size, metavar="N", default=None,
                        help="judge at most N entries of each gradient (and at most N x 4096 terms: corners, "
                             "edges, tile boundaries, planted probes, the rest at random; the backends still "
                             "compute everything); pass means no certain violation among those" + more)

    c = command("check", help="run backends on a case and print a verdict per gradient",
                       description="Run backends on a case file and judge each gradient against the exact spec: "
                                   "pass / order / precision / domain / error.")
    case_args(c)
    c.add_argument("--backend", action="append", required=True, metavar="NAME",
                   help="backend to run (repeatable); see 'difftest backends' (an emu-* name takes a shape gate: "
                        "emu-tf32@min-channels=32)")
    c.add_argument("--gradients", metavar="G,G", default=None,
                   help="request only these gradients of each backend and judge only them (comma-separated: "
                        f"{', '.join(GRADIENTS)}, or input, weight, bias; default: the case file's, else all "
                        "three); frameworks run other kernels when fewer are requested")
    c.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    c.add_argument("--save", metavar="DIR", help="write DIR/<backend>.npz with each backend's raw gradients")
    c.add_argument("--expected", metavar="FILE", help="expected-findings file (TOML): declared findings are shown as expected and do not fail the exit code "
                        "(default: DIFFTEST_EXPECTED, [tool.difftest] expected, else none)")
    c.add_argument("--fail-on", choices=list(FAIL_ON), default=None,
                   help=f"exit 1 on: {FAIL_ON_HELP} (default: DIFFTEST_FAIL_ON, [tool.difftest] fail_on, else order)")
    isolation_args(c)
    c.set_defaults(func=cmd_check)

    b = command("bounds", help="write the exact spec, NF reference and both bounds of a case",
                       description="Write g_exact, g_nf, g_bound (torchlean) and g_bound_order_free for "
                                   "g in grad_input, grad_weight, grad_bias.")
    case_args(b)
    b.add_argument("--format", choices=list(PRESETS), help="format to compute in (default: the case file's)")
    b.add_argument("--out", required=True, metavar="OUT.npz", help="output file")
    b.set_defaults(func=cmd_bounds)

    r = command(
        "run", help="run a fuzz campaign (hypothesis search, shrunk reproducers, results.jsonl)",
        description="Search cases with hypothesis, judge every backend on each, shrink each new finding to a "
                    "minimal reproducer. Writes OUT/results.jsonl (one line per case and backend), "
                    "OUT/cases/<id>.npz reproducers, OUT/environments.json and OUT/campaign.json.",
        epilog="Exit codes: 0 nothing at or above --fail-on, 1 a finding at or above it, 2 usage, input or "
               "environment error (e.g. OUT in use by another run), 130 interrupted (what was done is kept). "
               "Defaults come from DIFFTEST_* variables, then [tool.difftest] in the nearest pyproject.toml.",
    )
    r.add_argument("--backend", action="append", metavar="NAME",
                   help="backend to put on trial (repeatable; default: every available CPU backend but the emu-* "
                        "references; an emu-* name takes a shape gate: emu-tf32@min-channels=32)")
    r.add_argument("--profile", default=None, choices=list(PROFILE_CHOICES),
                   help="case sizes and effort: quick (~1 min, the default), ci (~5 min), nightly (~1 h); "
                        "hardware (30 min, 90 %% of the time on real layers with probes: for GPUs)")
    r.add_argument("--examples", type=_at_least_one("examples"), metavar="N", help="hypothesis examples per search round (default: the profile's)")
    r.add_argument("--time-budget", type=_seconds, metavar="SECONDS", help="wall-clock budget (default: the profile's)")
    r.add_argument("--fingerprint", action="store_true",
                   help="after the campaign, fingerprint each backend (difftest fingerprint, a few seconds each) into "
                        "OUT, so the report says what each one computes")
    r.add_argument("--no-shrink", action="store_true",
                   help="keep each finding as the first case that showed it (a GPU finding shrunk to a tiny shape "
                        "may leave the kernel that failed; with shrinking on, the largest such case is kept too)")
    r.add_argument("--stop-on", action="append", choices=list(FINDINGS), metavar="VERDICT",
                   help="end the campaign at the first finding with this verdict (repeatable), e.g. --stop-on precision")
    r.add_argument("--rounds", type=_at_least_one("rounds"), metavar="R",
                   help="at most R search rounds per format (with --examples: a campaign bounded by work, not time)")
    r.add_argument("--seed", type=int, default=None, help="seed of the search (default 0)")
    r.add_argument("--shard", default="1/1", metavar="K/N", help="run shard K of N (cases are partitioned by content hash)")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="result directory (default reports/latest); locked while the run writes it")
    r.add_argument("--fail-on", default=None, choices=list(FAIL_ON), help=f"exit 1 on: {FAIL_ON_HELP}")
    r.add_argument("--database", default=None, metavar="DIR",
                   help="hypothesis example database, kept between runs so failures replay first (default .difftest/hypothesis)")
    r.add_argument("--no-database", action="store_true", help="do not read or write an example database")
    r.add_argument("--quiet", action="store_true", help="print nothing but the final summary")
    r.add_argument("--no-report", action="store_true", help="do not write OUT/report.html at the end")
    r.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object (status, cases, duration_s, out, findings, "
                        "cells, exit_code) instead of the table")
    r.add_argument("--junit", metavar="FILE", help="also write JUnit XML: one testcase per backend x gradient")
    r.add_argument("--jobs", type=_at_least_one("processes"), metavar="N",
                   help="search the format groups in N processes, one results.jsonl (default: this machine's cores, "
                        f"{os.cpu_count() or 1} here; 1: this process)")
    scheduler_arg(r, "each case")
    r.add_argument("--expected", metavar="FILE", help="expected-findings file (TOML): declared findings are shown as expected and do not fail the exit code "
                        "(default: DIFFTEST_EXPECTED, [tool.difftest] expected, else none)")
    isolation_args(r)
    overwrite_arg(r)
    r.set_defaults(func=cmd_run)

    m = command("merge", help="combine result directories (shards, machines, nights)",
                       description="Combine result directories into a new one (written next to it and renamed into "
                                   "place when complete; an existing result directory there is replaced) and write "
                                   "its report.html. The output may not be, be inside or contain an input.")
    m.add_argument("dirs", nargs="+", metavar="DIR", help="result directories")
    m.add_argument("--out", required=True, metavar="DIR", help="merged result directory")
    m.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    m.add_argument("--fail-on", choices=list(FAIL_ON), default=None,
                   help=f"exit 1 on: {FAIL_ON_HELP} (default: DIFFTEST_FAIL_ON, [tool.difftest] fail_on, else order)")
    m.add_argument("--expected", metavar="FILE",
                   help="expected-findings file (TOML) (default: DIFFTEST_EXPECTED, [tool.difftest] expected, else the "
                        "union of the declarations the inputs were judged with)")
    overwrite_arg(m)
    m.set_defaults(func=cmd_merge)

    h = command("report", help="write a self-contained HTML report of result directories",
                       description="One HTML file (inline CSS and images, no scripts, no network) from one or "
                                   "more result directories: overview, findings with heatmaps and reproduce "
                                   "commands, tightness, environments.")
    h.add_argument("dirs", nargs="+", metavar="DIR", help="result directories (shards, machines, nights)")
    h.add_argument("-o", "--output", metavar="FILE.html", help="output file (default DIR/report.html of the first DIR)")
    h.add_argument("--baseline", metavar="DIR", help="mark findings that are not in this earlier result directory as new")
    h.add_argument("--expected", metavar="FILE",
                   help="expected-findings file to mark findings with (default: the one the run kept, expected.json)")
    h.set_defaults(func=cmd_report)

    bn = command("bench", help="time a full check of a reference layer, stage by stage, against torch",
                        description="Exact spec, NF reference + TorchLean bounds, order-free bounds and comparison of "
                                    "a layer, each the median of --repeat runs, next to torch's float64 backward of the "
                                    "same layer measured in the same process; peak memory. 'small' adds the campaign "
                                    "rate of small cases, 'scaling' the curve from 8 to 128 channels, 'jobs' the "
                                    "speed-up of a campaign in parallel processes, 'emulations' the time the quick "
                                    "profile takes to find precision for each emu-* backend and shape-gated variants.")
    bn.add_argument("--layer", default="resnet50-conv2",
                    choices=["resnet50-conv2", "strided", "small", "scaling", "jobs", "isolation", "emulations",
                             "first-run", "fingerprint", "sampled"],
                    help="resnet50-conv2: 64->64, 56x56, 3x3, stride 1, pad 1 (default); strided: 64->128, stride 2; "
                         "small: 8->8, 16x16; scaling: C->C for C = 8..128; jobs: a campaign in one process "
                         "and with --jobs = the cores; isolation: the quick campaign bounded by work with each "
                         "backend in a worker process and in process (--campaign-examples, --repeat); emulations: time to the first precision finding of each "
                         "emu-* backend in the quick profile (no shrinking, stops there); first-run: the cases the "
                         "default difftest run searches with an empty numba cache and then with it filled; fingerprint: the time "
                         "difftest fingerprint takes per CPU backend at resnet50.layer1.0.conv2, 56x56; sampled: "
                         "difftest check of a 1x16x1282x722, 3x3 layer with --sample (default 20000) in a fresh "
                         "process, wall time and the peak memory of its process tree")
    bn.add_argument("--model", metavar="MODEL", default=None,
                    help="time a whole-model check instead (difftest model MODEL): per stage, per layer (seconds per "
                         "multiply-add), peak memory, and the ratio to torch's float64 forward+backward of the model")
    bn.add_argument("--input-shape", metavar="N,C,H,W", default=None, help="--model's input shape (default 1,3,224,224)")
    bn.add_argument("--backend", action="append", metavar="NAME",
                    help="--model: backend to judge with (repeatable; default torch-cpu-float32)")
    bn.add_argument("--layers", metavar="REGEX", default=None, help="--model: only the convolutions matching REGEX")
    bn.add_argument("--max-memory", metavar="SIZE", default=None,
                    help="--model: refuse a layer estimated above SIZE (default auto: 60%% of this machine's memory)")
    bn.add_argument("--seed", type=int, default=0, help="campaign seed (--layer emulations, first-run); --model: the model's seed")
    bn.add_argument("--repeat", type=int, default=3, help="runs per stage (median), after one warm-up")
    bn.add_argument("--campaign-seconds", type=float, default=20.0, help="length of the campaign-rate run (--layer small)")
    bn.add_argument("--campaign-examples", type=int, metavar="N",
                    help="the campaign-rate run checks N cases (bounded by work) instead of --campaign-seconds")
    sample_arg(bn, "; --layer sampled: default 20000; --model: every layer sampled")
    bn.add_argument("--json", action="store_true", help="print JSON")
    bn.set_defaults(func=cmd_bench)

    f = command("fingerprint", help="infer what arithmetic a backend really does, per gradient, with evidence cases",
                description="Run crafted probe cases through each backend's conv2d backward and infer, per gradient, "
                            "the bits its inputs keep, the bits of its running sum, its rounding, FMA, subnormal "
                            "handling, summation order, determinism and error scaling (null: undecidable). Writes "
                            "OUT/<backend>/<gradient>-<property>.npz (the evidence of each claim, replayable with "
                            "difftest check) and OUT/fingerprints.json.")
    f.add_argument("--backend", action="append", required=True, metavar="NAME", help="backend to fingerprint (repeatable)")
    f.add_argument("--geometry", metavar="N,C,H,W,O,k,stride,padding",
                   help="probe at this geometry (default: resnet18.layer1.0.conv1 at 16x16: 64->64, 3x3, stride 1, "
                        "padding 1, where vendors' fast paths run)")
    f.add_argument("--layer", metavar="NAME",
                   help="probe at a catalogue layer (difftest.catalogue), at the largest input size within 20 M "
                        "multiply-adds per gradient")
    f.add_argument("--json", action="store_true", help="print the fingerprints as JSON instead of a table")
    f.add_argument("--out", default="reports/fingerprint", metavar="DIR",
                   help="where the evidence cases and fingerprints.json go (default reports/fingerprint)")
    isolation_args(f)
    f.set_defaults(func=cmd_fingerprint)

    md = command("model", help="judge every Conv2d of a whole model (torchvision name or package.module:callable)",
                 description="Build MODEL (a torchvision model name, random weights, or package.module:callable "
                             "returning a torch.nn.Module), run one float64 forward and backward pass in eval() mode "
                             "on seeded inputs (loss: a seeded random linear functional of the output), capture each "
                             "nn.Conv2d's input, weight and output gradient, and judge each layer as difftest check "
                             "--round-inputs does. Writes OUT/cases/<layer>.npz, results.jsonl, model.json and "
                             "report.html.",
                 epilog="Exit codes: 0 nothing at or above --fail-on, 1 a finding at or above it, 2 usage, input or "
                        "environment error. Replay a layer: difftest check OUT/cases/<layer>.npz --backend NAME "
                        "(the file says its values are rounded, as --round-inputs does).")
    md.add_argument("model", metavar="MODEL", help="torchvision model name (resnet50, mobilenet_v2, ...) or package.module:callable")
    md.add_argument("--input-shape", metavar="N,C,H,W", default=None, help="input shape (default 1,3,224,224)")
    md.add_argument("--backend", action="append", metavar="NAME",
                    help="backend to put on trial (repeatable; default: every available CPU backend but the emu-* "
                         "references, as difftest run)")
    md.add_argument("--layers", metavar="REGEX", default=None,
                    help="judge only the convolutions whose qualified name matches (re.search), e.g. 'layer1|conv1'")
    md.add_argument("--seed", type=int, default=0, help="seed of the weights, the input and the loss (default 0)")
    md.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    md.add_argument("--out", default=None, metavar="DIR", help="result directory (default reports/model/<model>)")
    md.add_argument("--fail-on", choices=list(FAIL_ON), default=None,
                    help=f"exit 1 on: {FAIL_ON_HELP} (default: DIFFTEST_FAIL_ON, [tool.difftest] fail_on, else order)")
    md.add_argument("--expected", metavar="FILE", help="expected-findings file (TOML), as for check")
    md.add_argument("--max-memory", metavar="SIZE",
                    help="judge a layer whose full check is estimated above SIZE at sampled entries (--sample, "
                         "default 4096), and refuse one whose sample is too (default auto: 60%% of this "
                         "machine's memory)")
    sample_arg(md, "; default: only the layers whose full check is above --max-memory, at 4096")
    scheduler_arg(md, "the layers")
    md.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    isolation_args(md)
    overwrite_arg(md)
    md.set_defaults(func=cmd_model)

    k = command("backends", help="list known backends and whether they can run here")
    k.add_argument("--json", action="store_true", help="print JSON")
    k.set_defaults(func=cmd_backends)
    return p


def _error(message: str, debug: bool) -> int:
    """One line on stderr (the traceback before it only with --debug); exit 2."""
    if debug:
        traceback.print_exc()
    print(f"difftest: error: {message}".replace("\n", " "), file=sys.stderr)
    return EXIT_USAGE


def _silence_stdout() -> None:
    """After the reader of stdout went away (``| head``): send what is left to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # the reader went away (difftest check ... | head): no traceback, and the command's own
        # exit code where its outcome was known before it printed (0 otherwise)
        _silence_stdout()
        return getattr(args, "exit_code", EXIT_OK)
    except KeyboardInterrupt:
        print("difftest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DifftestError as exc:
        return _error(str(exc), debug)
    except MemoryError as exc:
        what = ("the case is too large for this machine's memory; try a smaller case or a machine with more memory"
                if args.command in ("check", "bounds") else
                "this needs more memory than the machine has; try smaller cases (--profile quick) or a bigger machine")
        return _error(f"out of memory{f' ({exc})' if str(exc) else ''}: {what}", debug)
    except OSError as exc:  # PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError, ENOSPC, ...
        return _error(os_error_text(exc), debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
