"""The ``difftest`` command line's arguments: one parser, each command's options with their help,
and the ``type`` functions that check a value before any command runs (a bad one is a usage
error: one line, exit 2). :mod:`difftest.cli` runs the command a parse names (``command``)."""

from __future__ import annotations

import argparse
import math
import os
import sys

from .. import __version__
from ..config import DEFAULTS, PROFILE_NAMES
from ..errors import EXIT_USAGE
from ..values.formats import PRESETS
from ..values.geometry import GRADIENTS
from ..values.verdicts import FAIL_ON, FAIL_ON_HELP, FINDINGS

DEFAULT_TIMEOUT = DEFAULTS["backend_timeout"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with a one-line reason
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"difftest: error: {message}\n")




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


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
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
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

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

    def fail_on_arg(sp):
        sp.add_argument("--fail-on", choices=list(FAIL_ON), default=None,
                        help=f"exit 1 on: {FAIL_ON_HELP} (default: DIFFTEST_FAIL_ON, [tool.difftest] fail_on, else "
                             "order)")

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
    fail_on_arg(c)
    isolation_args(c)

    b = command("bounds", help="write the exact spec, NF reference and both bounds of a case",
                       description="Write g_exact, g_nf, g_bound (torchlean) and g_bound_order_free for "
                                   "g in grad_input, grad_weight, grad_bias.")
    case_args(b)
    b.add_argument("--format", choices=list(PRESETS), help="format to compute in (default: the case file's)")
    b.add_argument("--out", required=True, metavar="OUT.npz", help="output file")

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
    r.add_argument("--profile", default=None, choices=list(PROFILE_NAMES),
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
    fail_on_arg(r)
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

    m = command("merge", help="combine result directories (shards, machines, nights)",
                       description="Combine result directories into a new one (written next to it and renamed into "
                                   "place when complete; an existing result directory there is replaced) and write "
                                   "its report.html. The output may not be, be inside or contain an input.")
    m.add_argument("dirs", nargs="+", metavar="DIR", help="result directories")
    m.add_argument("--out", required=True, metavar="DIR", help="merged result directory")
    m.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    fail_on_arg(m)
    m.add_argument("--expected", metavar="FILE",
                   help="expected-findings file (TOML) (default: DIFFTEST_EXPECTED, [tool.difftest] expected, else the "
                        "union of the declarations the inputs were judged with)")
    overwrite_arg(m)

    h = command("report", help="write a self-contained HTML report of result directories",
                       description="One HTML file (inline CSS and images, no scripts, no network) from one or "
                                   "more result directories: overview, findings with heatmaps and reproduce "
                                   "commands, tightness, environments.")
    h.add_argument("dirs", nargs="+", metavar="DIR", help="result directories (shards, machines, nights)")
    h.add_argument("-o", "--output", metavar="FILE.html", help="output file (default DIR/report.html of the first DIR)")
    h.add_argument("--baseline", metavar="DIR", help="mark findings that are not in this earlier result directory as new")
    h.add_argument("--expected", metavar="FILE",
                   help="expected-findings file to mark findings with (default: the one the run kept, expected.json)")

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
                         "multiply-add), peak memory, and the ratio to torch's float64 forward+backward of the model; "
                         "torchvision is imported before the clock, as the warm-up loads the compiled folds, its time shown apart")
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
    fail_on_arg(md)
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

    k = command("backends", help="list known backends and whether they can run here")
    k.add_argument("--json", action="store_true", help="print JSON")
    return p
