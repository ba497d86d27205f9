"""The ``difftest`` command line: a thin face over :mod:`difftest.check`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .case import Case
from .compare import MEANING
from .errors import DifftestError
from .formats import PRESETS
from .geometry import GRADIENTS

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"difftest: error: {message}\n")


def _jsonable(x):
    """JSON without NaN/Infinity literals: non-finite numbers become the strings "inf", "-inf", "nan"."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _load_case(args) -> Case:
    return Case.load(args.case, format=getattr(args, "format", None), round_inputs=args.round_inputs)


def cmd_check(args) -> int:
    from .backends import get_backend
    from .check import check_case

    case = _load_case(args)
    backends = [get_backend(n) for n in args.backend]
    for b in backends:
        ok, reason = b.availability()
        if not ok:
            raise DifftestError(f"backend {b.name} is not available here: {reason}")
    results = check_case(case, backends, oracle=args.oracle)
    if args.save:
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.outputs is not None:
                np.savez(out / f"{r.backend}.npz", **r.outputs)
    if args.json:
        doc = {"case": {"path": str(args.case), **case.describe()}, "results": [r.as_dict() for r in results]}
        print(json.dumps(_jsonable(doc), indent=2))
    else:
        _print_table(case, results)
    return EXIT_OK if all(r.verdict == "pass" for r in results) else EXIT_FINDING


def _fmt_ratio(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


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
    header = f"{'backend':<24} {'format':<9} {'gradient':<12} {'verdict':<10} {'max_ratio':>10} {'ratio_of':>10} {'violations':>10}  worst"
    print(header)
    print("-" * len(header))
    for r in results:
        for name in GRADIENTS:
            gr = r.gradients[name]
            worst = "" if gr.worst_index is None else str(gr.worst_index)
            print(
                f"{r.backend:<24} {r.format:<9} {name:<12} {gr.verdict:<10} {_fmt_ratio(gr.max_ratio):>10} "
                f"{_fmt_ratio(gr.max_ratio_order_free):>10} {gr.violations:>10}  {worst}"
            )
            if gr.message and gr.verdict in ("error", "domain"):
                print(f"{'':<24} {gr.message}")
    seen = sorted({gr.verdict for r in results for gr in r.gradients.values()}, key=list(MEANING).index)
    print()
    for v in seen:
        print(f"{v:<10} {MEANING[v]}")
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
