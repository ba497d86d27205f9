"""A result set in words and for machines: the terminal summary, the JSON summary, JUnit XML.

All three count findings the same way (:func:`difftest.results.findings`: one per distinct
``(backend, gradient, verdict)``) and mark those an expectations file declares.
"""

from __future__ import annotations

from pathlib import Path

from ..records.expectations import REACHED_CASES, Expectations
from ..errors import DifftestError
from ..judge.explain import (RATIO_LEGEND, counts_text, finding_text, format_ratio, gradient_text, largest_case_text, legend,
                      plural, replay_path, reproduce_command)
from ..values.geometry import GRADIENTS
from ..values.outcome import ResultRecord, jsonable
from ..records.results import findings, summarize
from ..judge.sampling import sample_text
from ..values.verdicts import SEVERITY, VERDICTS, worst_verdict


def check_table(case, results, expected: dict) -> list[str]:
    """``difftest check``'s table of ``results`` on ``case`` (:class:`~difftest.case.Case`): the
    case, one row per backend and gradient, the legend, and what a sample judged;
    ``expected[(backend, gradient)]``: the declaration that accepts a finding."""
    lines: list[str] = []
    say = lines.append
    g = case.geometry
    say(
        f"case: input {g.input_shape}, weight {g.weight_shape}, {g.text()}, "
        f"format {case.format.name}"
        + (f", eps x/w/δ = {case.eps_input:g}/{case.eps_weight:g}/{case.eps_grad_output:g}" if case.round_inputs or case.eps_input or case.eps_weight or case.eps_grad_output else "")
        + ("" if case.all_gradients else f", requesting only {', '.join(case.gradients)}")
    )
    if g.extensions:
        say(f"note: {g.extension_note()}")
    if case.round_inputs:
        for fmt in dict.fromkeys(r.format for r in results):
            try:
                rt = case.runtime(fmt)
            except DifftestError:
                continue
            say(f"round-inputs: {fmt} runtime values {'rounded' if rt.rounded else 'exact'}, eps x/w/δ = "
                  f"{rt.eps_input:.3g}/{rt.eps_weight:.3g}/{rt.eps_grad_output:.3g}")
    header = f"{'backend':<24} {'format':<9} {'gradient':<12} {'verdict':<10} {'max_ratio':>10} {'ratio_of':>10} {'violations':>10}  worst"
    say(header)
    say("-" * len(header))
    for r in results:
        for name, gr in r.gradients.items():
            worst = "" if gr.worst_index is None else str(gr.worst_index)
            say(
                f"{r.backend:<24} {r.format:<9} {name:<12} {gr.verdict:<10} {format_ratio(gr.max_ratio):>10} "
                f"{format_ratio(gr.max_ratio_order_free):>10} {gr.violations:>10}  {worst}"
                + (f"  {gr.sampled_text}" if gr.sampled else "")
            )
            if gr.message and gr.verdict in ("error", "domain", "unsupported"):
                say(f"{'':<24} {gr.message}")
            if expected.get((r.backend, name)) is not None:
                say(f"{'':<24} expected: {expected[(r.backend, name)].reason}")
    say("")
    for line in legend(gr.verdict for r in results for gr in r.gradients.values()):
        say(line)
    say("max_ratio = max |backend - exact| / torchlean bound; ratio_of = the same against the order-free bound")
    sampled = {name: gr.sampled for r in results for name, gr in r.gradients.items() if gr.sampled}
    if sampled:
        say("sampled: judged / total entries; pass = no certain violation among the judged entries")
        for name, sm in sampled.items():
            say(f"  {sample_text(name, sm)}")
    return lines


def summary_doc(records: list[ResultRecord], replay_dir=None, expectations: Expectations | None = None) -> dict:
    """The summary as plain data: ``findings`` (one per distinct key, worst first: ``backend``,
    ``gradient``, ``verdict``, ``max_ratio``, ``max_ratio_order_free``, ``shrunk``, ``expected``
    (the declared reason, or null), ``case_file`` — a path to replay, under ``replay_dir`` when
    given), ``cells`` (``{backend: {gradient: {"cases", "worst_ratio", "worst_ratio_order_free",
    "counts"}}}``), ``not_seen`` (declared findings that did not show, though the run reached
    them), ``not_reached`` (those it did not reach often enough to tell) and ``expected`` (per
    declaration whose backend ran: ``declared``, ``cases`` it could have shown on, ``shown``,
    ``state``)."""
    e = expectations or Expectations()
    out = []
    for r in findings(records):
        f = r.finding
        gr = r.gradients[f.gradient]
        case_file = r.case_file if r.case_file is None or replay_dir is None else str(Path(replay_dir) / r.case_file)
        expected = e.explain_record(r, f.gradient)
        out.append({"backend": f.backend, "gradient": f.gradient, "verdict": f.verdict, "max_ratio": gr.max_ratio,
                    "max_ratio_order_free": gr.max_ratio_order_free, "shrunk": r.phase == "shrunk",
                    "expected": expected.reason if expected else None, "case_file": case_file})
    cells = {b: {g: {"cases": c.cases, "worst_ratio": c.worst_ratio, "worst_ratio_order_free": c.worst_ratio_order_free,
                     "counts": dict(c.counts)} for g, c in row.items()}
             for b, row in summarize(records).items()}
    coverage = e.coverage(records)
    return jsonable({"findings": out, "cells": cells,
                     "not_seen": [c.entry.describe() for c in coverage if c.state == "not seen any more"],
                     "not_reached": [c.entry.describe() for c in coverage if c.state == "not reached"],
                     "expected": [{"declared": c.entry.describe(), "cases": c.cases, "shown": c.shown, "state": c.state}
                                  for c in coverage]})


def junit_xml(records: list[ResultRecord], fail_on: str, replay_dir=None, duration_s: float = 0.0,
              properties: dict | None = None, expectations: Expectations | None = None) -> str:
    """JUnit XML: one ``<testcase classname="difftest.<backend>" name="<gradient>">`` per backend ×
    gradient, with a ``<failure>`` (the verdicts, the worst ratios, each finding and the command
    that replays it) where a verdict fails under ``fail_on`` that no expectation declares, and
    ``<skipped>`` where the gradient was never requested of the backend."""
    import xml.etree.ElementTree as ET

    e = expectations or Expectations()
    table = summarize(records)
    failing = {(r.backend, g) for r in records for g in r.gradients if e.fails(r, g, fail_on)}
    skipped = [(b, g) for b, row in table.items() for g in GRADIENTS if g not in row]
    suite = ET.Element("testsuite", name="difftest", tests=str(len(GRADIENTS) * len(table)),
                       failures=str(len(failing)), errors="0", skipped=str(len(skipped)), time=f"{duration_s:.3f}")
    if properties:
        props = ET.SubElement(suite, "properties")
        for k, v in properties.items():
            ET.SubElement(props, "property", name=str(k), value=str(v))
    found = findings(records)
    for backend, row in table.items():
        for g in GRADIENTS:
            tc = ET.SubElement(suite, "testcase", classname=f"difftest.{backend}", name=g)
            if g not in row:
                ET.SubElement(tc, "skipped", message=f"{g} was not requested of {backend} in any case")
                continue
            c = row[g]
            summary = (f"{backend} {g}: {plural(c.cases, 'case')}, verdicts {counts_text(c.counts)}; worst ratio "
                       f"{format_ratio(c.worst_ratio)} (TorchLean), {format_ratio(c.worst_ratio_order_free)} (order-free)")
            if (backend, g) not in failing:
                ET.SubElement(tc, "system-out").text = summary
                continue
            lines = [summary]
            mine = [r for r in found if r.finding.backend == backend and r.finding.gradient == g
                    and e.fails(r, g, fail_on)]
            for r in mine:
                lines += [f"{r.phase} " + gradient_text(backend, g, r.gradients[g]),
                          "    " + finding_text(backend, g, r.gradients[g], r.case_file, replay_dir,
                                                requested=r.requested).split("\n")[-1].strip()]
                if r.largest_case:
                    lines.append("    " + largest_case_text(r.largest_case, backend, replay_dir))
            if not mine:  # no finding's reproducer (e.g. interrupted): the worst searched case
                bad = [r for r in records if r.backend == backend and e.fails(r, g, fail_on)]
                worst = max(bad, key=lambda r: (SEVERITY[r.gradients[g].verdict], r.gradients[g].max_ratio))
                lines.append(gradient_text(backend, g, worst.gradients[g]))
                if worst.case_file:
                    lines.append("    reproduce: " + reproduce_command(replay_path(worst.case_file, replay_dir), backend,
                                                                     worst.requested))
            verdict = worst_verdict(r.gradients[g].verdict for r in records
                                    if r.backend == backend and e.fails(r, g, fail_on))
            failure = ET.SubElement(tc, "failure", type=verdict, message=summary)
            failure.text = "\n".join(lines)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def format_summary(records: list[ResultRecord], replay_dir=None, expectations: Expectations | None = None) -> str:
    """The backend × gradient table: cases, worst ratios, verdict counts; then the findings (those an
    expectation declares marked with its reason) and the declared findings not seen any more."""
    e = expectations or Expectations()
    lines = []
    header = f"{'backend':<24} {'gradient':<12} {'cases':>6} {'worst_ratio':>11} {'ratio_of':>9}  " + " ".join(
        f"{v:>9}" for v in VERDICTS
    )
    lines += [header, "-" * len(header)]
    for backend, row in summarize(records).items():
        for g in GRADIENTS:
            if g not in row:
                lines.append(f"{backend:<24} {g:<12} {0:>6}  not requested")
                continue
            c = row[g]
            counts = " ".join(f"{c.counts[v]:>9}" for v in VERDICTS)
            lines.append(f"{backend:<24} {g:<12} {c.cases:>6} {format_ratio(c.worst_ratio):>11} {format_ratio(c.worst_ratio_order_free):>9}  {counts}")
    found = findings(records)
    if found:
        shrunk = sum(r.phase == "shrunk" for r in found)
        expected = [e.explain_record(r, r.finding.gradient) for r in found]
        how = ("each shrunk to a minimal reproducer" if shrunk == len(found) else
               f"{shrunk} shrunk to a minimal reproducer, {len(found) - shrunk} the first case that showed it")
        n_expected = sum(x is not None for x in expected)
        lines += ["", f"{plural(len(found), 'finding')}, {how}" + (f"; {n_expected} expected" if n_expected else "") + ":"]
        for r, x in zip(found, expected):
            f = r.finding
            lines.append("  " + finding_text(f.backend, f.gradient, r.gradients[f.gradient], r.case_file, replay_dir,
                                             r.largest_case, r.requested))
            if x is not None:
                lines.append(f"    expected: {x.reason}")
        lines.append(f"  ({RATIO_LEGEND})")
    coverage = e.coverage(records)
    gone = [c for c in coverage if c.state == "not seen any more"]
    if gone:
        lines += ["", f"expected findings not seen any more (fix or remove them in {e.source}):"]
        lines += [f"  {c.describe()}" for c in gone]
    unreached = [c for c in coverage if c.state == "not reached"]
    if unreached:
        lines += ["", f"expected findings not reached in this run (fewer than {REACHED_CASES} cases they could show on):"]
        lines += [f"  {c.describe()}" for c in unreached]
    return "\n".join(lines)


def run_outputs(out: Path, fail_on: str, expectations, junit: Path | None, interrupted: bool, report: bool = True,
                as_json: bool = False, properties: dict | None = None) -> tuple[int, str]:
    """After ``difftest run``'s campaign in ``out``: its exit code, with its report (``report``) and
    JUnit file (``junit``) written, and what to print — the summary, or with ``as_json`` the JSON
    object (files first: a closed stdout loses no file). ``properties``: the run's settings for
    JUnit (profile, seed, shard)."""
    import json

    from ..errors import EXIT_INTERRUPTED
    from ..records.results import cases_per_backend, exit_code
    from ..records.store import REPORT, read_campaign, read_results

    records = read_results(out)
    info = read_campaign(out)
    code = EXIT_INTERRUPTED if interrupted else exit_code(records, fail_on, expectations)
    written = None
    if report:
        from .report import render

        written = render([out], out / REPORT)
    if junit is not None:
        junit.write_text(junit_xml(records, fail_on, replay_dir=out, duration_s=info.get("duration_s") or 0.0,
                                   properties={**(properties or {}), "fail_on": fail_on,
                                               "status": info.get("status") or "?"},
                                   expectations=expectations),
                         encoding="utf-8")
    if as_json:
        doc = {"status": info.get("status") or "?", "cases": info.get("cases") or 0,
               "cases_per_backend": info.get("cases_per_backend") or cases_per_backend(records),
               "duration_s": info.get("duration_s") or 0.0, "out": str(out),
               **summary_doc(records, replay_dir=out, expectations=expectations), "exit_code": code,
               "report": None if written is None else str(written), "junit": None if junit is None else str(junit)}
        return code, json.dumps(jsonable(doc), indent=2)
    lines = [format_summary(records, replay_dir=out, expectations=expectations)]
    searched = info.get("cases_per_backend") or cases_per_backend(records)
    if searched:
        lines.append("\ncases per backend: " + ", ".join(f"{b} {n}" for b, n in searched.items()))
    lines.append(f"\n{info.get('status') or '?'}: {plural(info.get('cases') or 0, 'case')} in "
                 f"{info.get('duration_s') or 0:.1f}s; results in {out}/results.jsonl")
    if written is not None:
        lines.append(f"report: {written}")
    if junit is not None:
        lines.append(f"junit: {junit}")
    return code, "\n".join(lines)
