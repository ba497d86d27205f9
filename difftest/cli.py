"""The ``difftest`` command line: a thin face over :mod:`difftest.check`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .case import Case
from .errors import DifftestError
from .explain import format_ratio, legend
from .formats import PRESETS
from .geometry import GRADIENTS
from .outcome import jsonable
from .verdicts import FAIL_ON, FAIL_ON_HELP

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"difftest: error: {message}\n")


def _load_case(args) -> Case:
    return Case.load(args.case, format=getattr(args, "format", None), round_inputs=args.round_inputs)


def _available_backends(names: list[str]) -> list:
    """The named backends; one that cannot run here is a usage error saying why."""
    from .backends import get_backend

    backends = [get_backend(n) for n in names]
    for b in backends:
        ok, reason = b.availability()
        if not ok:
            raise DifftestError(f"backend {b.name} is not available here: {reason}")
    return backends


def cmd_check(args) -> int:
    from .check import check_case

    case = _load_case(args)
    backends = _available_backends(args.backend)
    results = check_case(case, backends, oracle=args.oracle)
    if args.save:
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.outputs is not None:
                np.savez(out / f"{r.backend}.npz", **r.outputs)
    if args.json:
        doc = {"case": {"path": str(args.case), **case.describe()}, "results": [r.to_dict() for r in results]}
        print(json.dumps(jsonable(doc), indent=2))
    else:
        _print_table(case, results)
    return EXIT_OK if all(r.verdict == "pass" for r in results) else EXIT_FINDING


def _print_table(case: Case, results) -> None:
    g = case.geometry
    print(
        f"case: input {g.input_shape}, weight {g.weight_shape}, stride {g.stride}, padding {g.padding}, "
        f"format {case.format.name}"
        + (f", eps x/w/δ = {case.eps_input:g}/{case.eps_weight:g}/{case.eps_grad_output:g}" if case.round_inputs or case.eps_input or case.eps_weight or case.eps_grad_output else "")
    )
    if g.N > 1:
        print("note: batch N > 1: grad_weight/grad_bias bounds fold over (n, i, j), n outermost — "
              "a documented extension, not a Lean theorem")
    if case.round_inputs:
        for fmt in dict.fromkeys(r.format for r in results):
            try:
                rt = case.runtime(fmt)
            except DifftestError:
                continue
            print(f"round-inputs: {fmt} runtime values {'rounded' if rt.rounded else 'exact'}, eps x/w/δ = "
                  f"{rt.eps_input:.3g}/{rt.eps_weight:.3g}/{rt.eps_grad_output:.3g}")
    header = f"{'backend':<24} {'format':<9} {'gradient':<12} {'verdict':<10} {'max_ratio':>10} {'ratio_of':>10} {'violations':>10}  worst"
    print(header)
    print("-" * len(header))
    for r in results:
        for name in GRADIENTS:
            gr = r.gradients[name]
            worst = "" if gr.worst_index is None else str(gr.worst_index)
            print(
                f"{r.backend:<24} {r.format:<9} {name:<12} {gr.verdict:<10} {format_ratio(gr.max_ratio):>10} "
                f"{format_ratio(gr.max_ratio_order_free):>10} {gr.violations:>10}  {worst}"
            )
            if gr.message and gr.verdict in ("error", "domain"):
                print(f"{'':<24} {gr.message}")
    print()
    for line in legend(gr.verdict for r in results for gr in r.gradients.values()):
        print(line)
    print("max_ratio = max |backend - exact| / torchlean bound; ratio_of = the same against the order-free bound")


def cmd_bounds(args) -> int:
    from .check import bounds_arrays

    case = _load_case(args)
    arrays = bounds_arrays(case, oracle=args.oracle)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        np.savez(f, **arrays, format=np.str_(case.format.name), batch_extension=np.bool_(case.geometry.N > 1))
    print(f"wrote {out}: " + ", ".join(f"{g}_{{exact,nf,bound,bound_order_free}}" for g in GRADIENTS))
    for g in GRADIENTS:
        print(f"  {g:<12} linf torchlean bound {arrays[g + '_bound'].max():.6g}, "
              f"order-free {arrays[g + '_bound_order_free'].max():.6g}")
    if case.geometry.N > 1:
        print("note: batch N > 1: grad_weight/grad_bias bounds are the (n, i, j) fold extension, not a Lean theorem")
    return EXIT_OK


def cmd_backends(args) -> int:
    from .backends import all_backends

    rows = []
    for b in all_backends().values():
        ok, reason = b.availability()
        rows.append({"name": b.name, "available": ok, "reason": reason, "format": b.format.name,
                     "device": b.device, "version": b.version() if ok else "", "accumulation": b.accumulation})
    if args.json:
        print(json.dumps({"backends": rows}, indent=2))
        return EXIT_OK
    print(f"{'backend':<24} {'format':<9} {'device':<6} {'available':<9}  notes")
    for r in rows:
        notes = r["accumulation"] if r["available"] else r["reason"]
        print(f"{r['name']:<24} {r['format']:<9} {r['device']:<6} {'yes' if r['available'] else 'no':<9}  {notes}")
    return EXIT_OK


def cmd_run(args) -> int:
    from .campaign import PROFILES, Campaign, CampaignConfig, default_backends, parse_shard
    from .results import exit_code, format_summary, read_campaign, read_results

    backends = _available_backends(args.backend) if args.backend else default_backends()
    if args.examples is not None and args.examples < 1:
        raise DifftestError("--examples must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        raise DifftestError("--rounds must be >= 1")
    if args.time_budget is not None and args.time_budget <= 0:
        raise DifftestError("--time-budget must be > 0 seconds")
    config = CampaignConfig(
        backends=backends,
        profile=PROFILES[args.profile],
        examples=args.examples,
        time_budget=args.time_budget,
        seed=args.seed,
        shard=parse_shard(args.shard),
        out=Path(args.out),
        database=None if args.no_database else Path(args.database),
        progress=not args.quiet,
        rounds=args.rounds,
    )
    campaign = Campaign(config)
    print(f"difftest run: profile {args.profile}, {len(backends)} backends "
          f"({', '.join(b.name for b in backends)}), budget {campaign.budget:g}s, seed {args.seed}, "
          f"shard {args.shard} -> {args.out}", file=sys.stderr)
    interrupted = False
    try:
        campaign.run()
    except KeyboardInterrupt:
        interrupted = True
    records = read_results(config.out)
    info = read_campaign(config.out)
    print(format_summary(records, replay_dir=config.out))
    print(f"\n{info.get('status', '?')}: {info.get('cases', 0)} cases in {info.get('duration_s', 0):.1f}s; "
          f"results in {config.out}/results.jsonl")
    if not args.no_report:
        from .report import render

        print(f"report: {render([config.out], config.out / 'report.html')}")
    if interrupted:
        return 130
    return exit_code(records, args.fail_on)


def cmd_report(args) -> int:
    from .report import render

    dirs = [Path(d) for d in args.dirs]
    out = Path(args.output) if args.output else dirs[0] / "report.html"
    render(dirs, out, baseline=Path(args.baseline) if args.baseline else None)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import bench

    if args.repeat < 1:
        raise DifftestError("--repeat must be >= 1")
    doc: dict = {"machine": bench.machine()}
    if args.layer in bench.LAYERS:
        doc["layer"] = bench.bench_layer(bench.LAYERS[args.layer], args.repeat)
        if args.layer == "small":
            doc["campaign"] = bench.campaign_rate(args.campaign_seconds)
    elif args.layer == "scaling":
        doc["scaling"] = bench.scaling(repeat=args.repeat)
    if args.json:
        print(json.dumps(jsonable(doc), indent=2))
        return EXIT_OK
    if "layer" in doc:
        bench.print_layer(doc["layer"])
    if "campaign" in doc:
        c = doc["campaign"]
        print(f"campaign of small cases ({', '.join(c['backends'])}): {c['cases']} cases in {c['seconds']:.1f} s "
              f"= {c['cases_per_second']:.1f} cases/s")
    for row in doc.get("scaling", []):
        print(f"C = {row['channels']:>3}: {row['macs_per_gradient'] / 1e6:8.1f} M MACs  {row['total_s']:7.3f} s  "
              f"{row['ns_per_mac']:.2f} ns/MAC")
    return EXIT_OK


def cmd_merge(args) -> int:
    from .results import format_summary, merge, read_results

    n = merge([Path(d) for d in args.dirs], Path(args.out))
    print(format_summary(read_results(Path(args.out)), replay_dir=args.out))
    print(f"\nmerged {len(args.dirs)} directories, {n} result lines -> {args.out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="difftest",
        description="Put Conv2D backward of real backends on trial against TorchLean's certified NF error bounds.",
        epilog="Exit codes: 0 all pass, 1 a finding (a verdict other than pass), 2 usage or input error.",
    )
    p.add_argument("--version", action="version", version=f"difftest {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def case_args(sp):
        sp.add_argument("case", help="case file (.npz with input, weight, grad_output, stride, padding[, format, eps_*])")
        sp.add_argument("--round-inputs", action="store_true",
                        help="round values not representable in a format into it, and add the exact maximal "
                             "rounding error of each tensor to its eps (otherwise such values are an error)")
        sp.add_argument("--oracle", default="exact", choices=["exact", "mpmath"],
                        help="exact-spec oracle: 'exact' (fast, sliced GEMMs) or 'mpmath' (the slow reference)")

    c = sub.add_parser("check", help="run backends on a case and print a verdict per gradient",
                       description="Run backends on a case file and judge each gradient against the exact spec: "
                                   "pass / order / precision / domain / error.")
    case_args(c)
    c.add_argument("--backend", action="append", required=True, metavar="NAME",
                   help="backend to run (repeatable); see 'difftest backends'")
    c.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    c.add_argument("--save", metavar="DIR", help="write DIR/<backend>.npz with each backend's raw gradients")
    c.set_defaults(func=cmd_check)

    b = sub.add_parser("bounds", help="write the exact spec, NF reference and both bounds of a case",
                       description="Write g_exact, g_nf, g_bound (torchlean) and g_bound_order_free for "
                                   "g in grad_input, grad_weight, grad_bias.")
    case_args(b)
    b.add_argument("--format", choices=list(PRESETS), help="format to compute in (default: the case file's)")
    b.add_argument("--out", required=True, metavar="OUT.npz", help="output file")
    b.set_defaults(func=cmd_bounds)

    r = sub.add_parser(
        "run", help="run a fuzz campaign (hypothesis search, shrunk reproducers, results.jsonl)",
        description="Search cases with hypothesis, judge every backend on each, shrink each new finding to a "
                    "minimal reproducer. Writes OUT/results.jsonl (one line per case and backend), "
                    "OUT/cases/<id>.npz reproducers, OUT/environments.json and OUT/campaign.json.",
        epilog="Exit codes: 0 nothing at or above --fail-on, 1 a finding at or above it, 2 usage error, "
               "130 interrupted (what was done is kept).",
    )
    r.add_argument("--backend", action="append", metavar="NAME",
                   help="backend to put on trial (repeatable; default: every available CPU backend)")
    r.add_argument("--profile", default="quick", choices=["quick", "ci", "nightly"],
                   help="case sizes and effort: quick (~1 min), ci (~5 min), nightly (~1 h)")
    r.add_argument("--examples", type=int, metavar="N", help="hypothesis examples per search round (default: the profile's)")
    r.add_argument("--time-budget", type=float, metavar="SECONDS", help="wall-clock budget (default: the profile's)")
    r.add_argument("--rounds", type=int, metavar="R",
                   help="at most R search rounds per format (with --examples: a campaign bounded by work, not time)")
    r.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    r.add_argument("--shard", default="1/1", metavar="K/N", help="run shard K of N (cases are partitioned by content hash)")
    r.add_argument("--out", default="reports/latest", metavar="DIR", help="result directory (default reports/latest)")
    r.add_argument("--fail-on", default="order", choices=list(FAIL_ON), help=f"exit 1 on: {FAIL_ON_HELP}")
    r.add_argument("--database", default=".difftest/hypothesis", metavar="DIR",
                   help="hypothesis example database, kept between runs so failures replay first (default .difftest/hypothesis)")
    r.add_argument("--no-database", action="store_true", help="do not read or write an example database")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--no-report", action="store_true", help="do not write OUT/report.html at the end")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("merge", help="combine result directories (shards, machines, nights)")
    m.add_argument("dirs", nargs="+", metavar="DIR", help="result directories")
    m.add_argument("--out", required=True, metavar="DIR", help="merged result directory")
    m.set_defaults(func=cmd_merge)

    h = sub.add_parser("report", help="write a self-contained HTML report of result directories",
                       description="One HTML file (inline CSS and images, no scripts, no network) from one or "
                                   "more result directories: overview, findings with heatmaps and reproduce "
                                   "commands, tightness, environments.")
    h.add_argument("dirs", nargs="+", metavar="DIR", help="result directories (shards, machines, nights)")
    h.add_argument("-o", "--output", metavar="FILE.html", help="output file (default DIR/report.html of the first DIR)")
    h.add_argument("--baseline", metavar="DIR", help="mark findings that are not in this earlier result directory as new")
    h.set_defaults(func=cmd_report)

    bn = sub.add_parser("bench", help="time a full check of a reference layer, stage by stage, against torch",
                        description="Exact spec, NF reference + TorchLean bounds, order-free bounds and comparison of "
                                    "a layer, each the median of --repeat runs, next to torch's float64 backward of the "
                                    "same layer measured in the same process; peak memory. 'small' adds the campaign "
                                    "rate of small cases, 'scaling' the curve from 8 to 128 channels.")
    bn.add_argument("--layer", default="resnet50-conv2", choices=["resnet50-conv2", "strided", "small", "scaling"],
                    help="resnet50-conv2: 64->64, 56x56, 3x3, stride 1, pad 1 (default); strided: 64->128, stride 2; "
                         "small: 8->8, 16x16; scaling: C->C for C = 8..128")
    bn.add_argument("--repeat", type=int, default=3, help="runs per stage (median), after one warm-up")
    bn.add_argument("--campaign-seconds", type=float, default=20.0, help="length of the campaign-rate run (--layer small)")
    bn.add_argument("--json", action="store_true", help="print JSON")
    bn.set_defaults(func=cmd_bench)

    k = sub.add_parser("backends", help="list known backends and whether they can run here")
    k.add_argument("--json", action="store_true", help="print JSON")
    k.set_defaults(func=cmd_backends)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DifftestError as exc:
        print(f"difftest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("difftest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
