"""The ``difftest`` commands: each resolves its settings (:meth:`difftest.config.Config.resolve`),
runs the library (:mod:`difftest.check`, :mod:`difftest.campaign`, :mod:`difftest.model`,
:mod:`difftest.fingerprint`, :mod:`difftest.store`, :mod:`difftest.report`, :mod:`difftest.bench`)
and prints what the library puts in words (:mod:`difftest.summary`, :mod:`difftest.explain`); the
arguments are :mod:`difftest.arguments`'s, the exit codes :mod:`difftest.errors`'s."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import traceback
from pathlib import Path

import numpy as np

from .arguments import build_parser
from ..values.case import Case
from ..errors import EXIT_FINDING, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, DifftestError, os_error_text
from ..judge.explain import plural
from ..values.outcome import jsonable
from .paths import writable_dir, writable_file
from ..records.store import REPORT


# --- environment: paths to write, errors to explain ------------------------------------------------


def _load_case(args) -> Case:
    return Case.load(args.case, format=getattr(args, "format", None), round_inputs=args.round_inputs or None,
                     gradients=_gradients(args))


def _gradients(args) -> tuple[str, ...] | None:
    """``check --gradients``: the requested gradients, overriding the case file's (None: the file's)."""
    from ..values.geometry import gradient_subset

    text = getattr(args, "gradients", None)
    if text is None:
        return None
    try:
        return gradient_subset(text)
    except DifftestError as exc:
        raise DifftestError(f"--gradients {text}: {exc}") from None


def _config():
    """``[tool.difftest]`` of the nearest pyproject.toml and the DIFFTEST_* variables."""
    from .. import config

    cfg = config.load()
    for note in cfg.notes:
        print(f"difftest: note: {note}", file=sys.stderr)
    return cfg


def _max_memory(args):
    """--max-memory in bytes; "auto" (the default) is a safe share of this machine's memory."""
    from ..judge.estimate import parse_size

    return "auto" if args.max_memory in (None, "auto") else parse_size(args.max_memory)


def _expectations(args, cfg):
    """The expected findings named by --expected, DIFFTEST_EXPECTED or [tool.difftest] expected."""
    from ..records.expectations import Expectations

    path = cfg.resolve("expected", args.expected)
    return Expectations.load(path) if path else Expectations()


def _available_backends(names: list[str]) -> list:
    """The named backends (a spec ``MODULE:ATTR`` may name several); one that cannot run here is a
    usage error saying why."""
    from ..backends import backends_named

    backends = [b for n in names for b in backends_named(n)]
    for b in backends:
        ok, reason = b.availability()
        if not ok:
            raise DifftestError(f"backend {b.name} is not available here: {reason}")
    return backends


@contextlib.contextmanager
def _judges(backends: list, args, cfg):
    """The backends as the command runs them: each in a worker process (difftest.isolation), or in
    this one with --no-isolate. The workers end with the command."""
    if args.no_isolate:
        yield backends
        return
    from ..judge.isolation import Workers

    with Workers(cfg.resolve("backend_timeout", args.backend_timeout)) as pool:
        wrapped = pool.wrap(backends)
        for note in pool.notes:
            print(f"difftest: note: {note}", file=sys.stderr)
        yield wrapped


def _say(text: str) -> None:
    """A progress line on stderr."""
    print(f"difftest: {text}", file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    from ..judge.check import check_case

    cfg = _config()
    fail_on, expectations = cfg.resolve("fail_on", args.fail_on), _expectations(args, cfg)
    case = _load_case(args)
    backends = _available_backends(args.backend)
    out = writable_dir(args.save, "--save") if args.save else None
    with _judges(backends, args, cfg) as judges:
        results = check_case(case, judges, oracle=args.oracle, max_memory=_max_memory(args), progress=_say,
                             sample=cfg.resolve("sample", args.sample), seed=args.seed)
    if out is not None:
        for r in results:
            if r.outputs is not None:
                np.savez(out / f"{r.backend}.npz", **r.outputs)
    geometry = case.geometry.as_dict()
    expected, failed = expectations.judge((((r.backend, g), r.backend, g, gr.verdict, r.format, geometry)
                                           for r in results for g, gr in r.gradients.items()), fail_on)
    code = args.exit_code = EXIT_FINDING if failed else EXIT_OK  # the outcome, also if stdout goes away
    if args.json:
        doc = {"case": {"path": str(args.case), **case.describe()}, "results": [r.to_dict() for r in results]}
        print(json.dumps(jsonable(doc), indent=2))
    else:
        from .summary import check_table

        print("\n".join(check_table(case, results, expected)))
    return code


def cmd_bounds(args) -> int:
    from ..judge.check import bounds_arrays

    case = _load_case(args)
    out = writable_file(args.out, "--out")
    arrays = bounds_arrays(case, oracle=args.oracle, max_memory=_max_memory(args),
                           sample=_config().resolve("sample", args.sample), seed=args.seed)
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
    from ..backends import all_backends
    from ..judge.check import supports_of
    from ..judge.explain import backends_table

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
    print("\n".join(backends_table(rows)))
    return EXIT_OK


def cmd_run(args) -> int:
    from ..campaigns.campaign import PROFILES, Campaign, CampaignConfig, default_backends, parse_shard

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
    fail_on = cfg.resolve("fail_on", args.fail_on)
    expectations = _expectations(args, cfg)
    out = Path(cfg.resolve("out", args.out))
    database = None if args.no_database else cfg.resolve("database", args.database)
    database = None if database is None else Path(database)
    shard = parse_shard(args.shard)
    writable_dir(out, "--out")
    junit = writable_file(args.junit, "--junit") if args.junit else None
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
        backend_timeout=cfg.resolve("backend_timeout", args.backend_timeout),
        overwrite=args.overwrite,
        scheduler=cfg.resolve("scheduler", args.scheduler),
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
    from .summary import run_outputs

    try:
        code, text = run_outputs(config.out, fail_on, expectations, junit, interrupted, report=not args.no_report,
                                 as_json=args.json, properties={"profile": profile, "seed": seed, "shard": args.shard})
        args.exit_code = code  # the outcome, also if the reader of stdout goes away
        print(text)
    except (DifftestError, OSError):
        if failure is not None:  # writing the report failed too (a full disk): the campaign's error is the one
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return code


def cmd_report(args) -> int:
    from .report import render

    dirs = [Path(d) for d in args.dirs]
    out = writable_file(args.output, "-o") if args.output else dirs[0] / REPORT
    from ..records.expectations import Expectations

    render(dirs, out, baseline=Path(args.baseline) if args.baseline else None,
           expectations=Expectations.load(args.expected) if args.expected else None)
    args.exit_code = EXIT_OK
    print(f"wrote {out}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import bench

    if args.repeat < 1:
        raise DifftestError("--repeat must be >= 1")
    shape = backends = None
    if args.model is not None:
        from ..model import DEFAULT_INPUT_SHAPE, parse_input_shape

        shape = parse_input_shape(args.input_shape) if args.input_shape is not None else DEFAULT_INPUT_SHAPE
        backends = _available_backends(args.backend or ["torch-cpu-float32"])
    doc = bench.measure(args.layer, model=args.model, backends=backends or args.backend, input_shape=shape,
                        layers=args.layers, max_memory=_max_memory(args), sample=args.sample, seed=args.seed,
                        repeat=args.repeat, campaign_seconds=args.campaign_seconds,
                        campaign_examples=args.campaign_examples, progress=_say)
    if args.json:
        print(json.dumps(jsonable(doc), indent=2))
        return EXIT_OK
    bench.print_doc(doc)
    return EXIT_OK


def cmd_model(args) -> int:
    import re

    from .. import model as mdl
    from ..campaigns.campaign import default_backends

    cfg = _config()
    fail_on, expectations = cfg.resolve("fail_on", args.fail_on), _expectations(args, cfg)
    shape = mdl.parse_input_shape(args.input_shape) if args.input_shape is not None else mdl.DEFAULT_INPUT_SHAPE
    if args.layers is not None:
        try:
            re.compile(args.layers)
        except re.error as exc:
            raise DifftestError(f"--layers {args.layers!r} is not a valid regular expression: {exc}") from None
    backends = _available_backends(args.backend) if args.backend else default_backends()
    out = writable_dir(args.out if args.out is not None else Path("reports/model") / mdl.model_label(args.model), "--out")
    result = mdl.check_model(args.model, backends, shape, layers=args.layers, seed=args.seed, out=out,
                             max_memory=_max_memory(args), progress=_say, expectations=expectations,
                             sample=cfg.resolve("sample", args.sample), scheduler=cfg.resolve("scheduler", args.scheduler),
                             isolate=not args.no_isolate,
                             backend_timeout=cfg.resolve("backend_timeout", args.backend_timeout),
                             overwrite=args.overwrite)
    expected, failed = expectations.judge((((layer.name, r.backend, g), r.backend, g, gr.verdict, r.format,
                                            layer.geometry.as_dict())
                                           for layer in result.layers for r in layer.results
                                           for g, gr in r.gradients.items()), fail_on)
    code = args.exit_code = EXIT_FINDING if failed else EXIT_OK
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
    """Fingerprint each backend, each in its worker, into ``out`` (:func:`difftest.fingerprint.fingerprint_all`)."""
    from .. import fingerprint as fp

    with _judges(backends, args, cfg) as judges:
        return fp.fingerprint_all(judges, geometry, out, say=None if quiet else _say)


def cmd_fingerprint(args) -> int:
    from .. import fingerprint as fp

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
    out = writable_dir(args.out, "--out")
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
    from ..records.results import exit_code
    from ..records.store import merge, read_expected, read_results
    from .summary import format_summary

    cfg = _config()
    fail_on = cfg.resolve("fail_on", args.fail_on)
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


#: Each command's function, by the name the parser gives it (:func:`difftest.arguments.build_parser`).
COMMANDS = {"check": cmd_check, "bounds": cmd_bounds, "run": cmd_run, "merge": cmd_merge, "report": cmd_report,
            "bench": cmd_bench, "fingerprint": cmd_fingerprint, "model": cmd_model, "backends": cmd_backends}


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
        code = COMMANDS[args.command](args)
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
