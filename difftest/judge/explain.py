"""The words for what was found: every mismatch text is built here.

The CLI tables and summary, ``assert_within_bounds`` and the pytest plugin say what a result
means through these functions, so a verdict, a ratio, a worst entry or a reproducer command
reads the same everywhere. Verdict meanings come from :mod:`difftest.verdicts`.
"""

from __future__ import annotations

import math
import shlex

from ..values.geometry import GRADIENTS
from ..values.outcome import GradientResult, as_float
from ..values.verdicts import MEANING, VERDICTS

RATIO_LEGEND = "ratio = |backend - exact| / bound: TorchLean bound / order-free bound"


def format_ratio(x: float) -> str:
    """A ratio to the bound, short, never shown as "1" unless it is exactly 1: below 1 it is
    truncated (0.99999 -> "0.9999"), just above 1 it keeps the digits that show it (1.0004)."""
    x = as_float(x)
    if math.isinf(x) or math.isnan(x):
        return str(x)
    if x < 1:
        return f"{math.floor(x * 1e4) / 1e4:.4g}"
    digits = 3
    while digits < 17 and float(f"{x:.{digits}g}") == 1.0 and x > 1.0:
        digits += 1
    return f"{x:.{digits}g}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 entry``, ``2 entries``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def reproduce_command(case_file, backend: str, requested=GRADIENTS, sampled: dict | None = None) -> str:
    """The one command that replays a result; with ``--gradients`` where fewer than all three
    were requested (the case file keeps them too: the option says so where it is read), and
    ``--sample N --seed S`` where it was judged at sampled entries (``GradientResult.sampled``)."""
    cmd = f"difftest check {shlex.quote(str(case_file))} --backend {shlex.quote(backend)}"
    requested = tuple(requested)
    if requested != GRADIENTS:
        cmd += f" --gradients {','.join(requested)}"
    if sampled and sampled.get("size"):
        cmd += f" --sample {sampled['size']} --seed {sampled.get('seed', 0)}"
    return cmd


def sampled_of(gradients: dict) -> dict | None:
    """The sample of a result's gradients (one per result: the first sampled gradient's), or None."""
    return next((gr.sampled for gr in gradients.values() if gr.sampled), None)


def ratios_text(gr: GradientResult) -> str:
    return (f"ratio {format_ratio(gr.max_ratio)} to the TorchLean bound, "
            f"{format_ratio(gr.max_ratio_order_free)} to the order-free bound")


def violations_text(gr: GradientResult) -> str:
    return (f"{plural(gr.violations, 'entry', 'entries')} certainly beyond the TorchLean bound, "
            f"{gr.violations_order_free} beyond the order-free bound")


def worst_text(gr: GradientResult) -> str:
    """The worst entry: index, backend and exact values, error (and in ulps), both bounds."""
    w = gr.worst
    if not w:
        return ""
    return (f"worst {w['index']}: backend {w['backend']!r}, exact {w['exact']!r}, error {w['error']:.4g} "
            f"({w['ulps']:.3g} ulp), bounds {w['bound']:.4g} (TorchLean) / {w['bound_order_free']:.4g} (order-free)")


def gradient_text(backend: str, gradient: str, gr: GradientResult) -> str:
    """Everything one gradient's result says, on one line."""
    parts = [f"{backend} {gradient}: {gr.verdict} ({MEANING[gr.verdict]})"]
    if gr.verdict not in ("error",) and gr.worst:
        parts += [ratios_text(gr), violations_text(gr), worst_text(gr)]
    if gr.message:
        parts.append(gr.message)
    return "; ".join(parts)


def counts_text(counts: dict[str, int]) -> str:
    """Verdict counts, most severe last: ``pass 300, order 12``."""
    return ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts.get(v))


def legend(verdicts) -> list[str]:
    """One line per verdict seen, saying what it means."""
    seen = sorted(set(verdicts), key=VERDICTS.index)
    return [f"{v:<10} {MEANING[v]}" for v in seen]


def replay_path(case_file, replay_dir=None) -> str:
    """A result directory's case file as a path to replay: under ``replay_dir`` when given."""
    return f"{replay_dir}/{case_file}" if replay_dir else str(case_file)


def geometry_text(g: dict) -> str:
    """A geometry (``Geometry.as_dict()``, or an older record's without dilation and groups) in one line."""
    from ..values.geometry import Geometry

    return Geometry.from_dict(g).case_text()


def largest_case_text(largest: dict, backend: str, replay_dir=None) -> str:
    """Where a finding's reproducer was shrunk: the largest searched case that showed it, and its replay."""
    path = replay_path(largest["case_file"], replay_dir)
    return (f"largest case that showed it ({geometry_text(largest['geometry'])}): "
            f"{reproduce_command(path, backend)}")


def finding_text(backend: str, gradient: str, gr: GradientResult, case_file, replay_dir=None,
                 largest_case: dict | None = None, requested=GRADIENTS) -> str:
    """A finding in a list: key, ratios (an ``error``: what happened, ``crashed: SIGABRT``), the
    command that replays it (with the ``requested`` gradients) and, where the reproducer was shrunk
    from a larger case, the largest case's replay."""
    path = replay_path(case_file, replay_dir)
    what = gr.message if gr.verdict == "error" and gr.message else ratios_text(gr)
    text = (f"{backend} {gradient}: {gr.verdict}, {what}\n"
            f"    reproduce: {reproduce_command(path, backend, requested)}")
    if largest_case:
        text += "\n    " + largest_case_text(largest_case, backend, replay_dir)
    return text


def backends_table(rows: list[dict]) -> list[str]:
    """``difftest backends``'s table: one row per backend (``rows`` as its ``--json`` has them:
    name, format, device, available, reason, accumulation, supports) and the shape-gate note."""
    from ..values.supports import Supports

    lines = [f"{'backend':<24} {'format':<9} {'device':<6} {'available':<9}  notes"]
    for r in rows:
        notes = r["accumulation"] if r["available"] else r["reason"]
        left_out = Supports(**r["supports"]).label
        notes += f"; takes {left_out}" if left_out else ""
        lines.append(f"{r['name']:<24} {r['format']:<9} {r['device']:<6} {'yes' if r['available'] else 'no':<9}  {notes}")
    lines.append("\nAny emu-* name takes a shape gate, as libraries switch kernels by shape: emu-tf32@min-channels=32 "
                 "computes like emu-tf32 where both channel counts are >= 32, like numpy-float32 elsewhere; emu-blocked-L "
                 "takes any block length L >= 2 (README: Backends).")
    return lines
