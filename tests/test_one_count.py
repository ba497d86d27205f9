"""One count of findings: the progress line, campaign.json, the terminal summary, --json, JUnit, the report and
a merge of the directory all give the same number, one per distinct (backend, gradient, verdict), and no
finding a searched case showed is lost — also where one case shows several findings of one backend and no
time is left to shrink them."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difftest.cli import main
from difftest.outcome import FindingKey
from difftest.results import findings
from difftest.store import read_campaign, read_results
from difftest.summary import format_summary

# emu-tf32 and emu-rtz-acc break binary32's bound in several gradients of one case; numpy's and torch's
# bfloat16 show order and (subnormals flushed) precision: two format groups, so --jobs 2 runs two jobs.
BACKENDS = ["--backend", "emu-tf32", "--backend", "emu-rtz-acc", "--backend", "numpy-bfloat16",
            "--backend", "torch-cpu-bfloat16"]


def faces(out: Path, stderr: str, stdout_json: dict | None, tmp: Path) -> dict:
    """The number of findings each face gives for the result directory ``out``."""
    records = read_results(out)
    progress = re.findall(r"difftest: \d+ cases, (\d+) findings", stderr)
    summary = re.search(r"^(\d+) findings?,", format_summary(records), flags=re.M)
    junit = ET.parse(out / "junit.xml").getroot()
    junit_findings = sum(1 for f in junit.iter("failure") for line in (f.text or "").splitlines()
                         if re.match(r"(shrunk|unshrunk) ", line))
    page = (out / "report.html").read_text()
    assert main(["merge", str(out), "--out", str(tmp / "merged"), "--no-report", "--fail-on", "never"]) == 0
    counts = {
        "lines": len(findings(records)),
        "campaign.json": read_campaign(out)["findings"],
        "progress line": int(progress[-1]) if progress else 0,
        "summary": int(summary.group(1)) if summary else 0,
        "junit": junit_findings,
        "report": int(re.search(r"Findings \((\d+)\)", page).group(1)) if "Findings (" in page else 0,
        "merge": len(findings(read_results(tmp / "merged"))),
    }
    if stdout_json is not None:
        counts["--json"] = len(stdout_json["findings"])
    return counts


def seen_keys(out: Path) -> set:
    """Every non-pass (backend, gradient, verdict) any searched case showed."""
    return {FindingKey(r.backend, g, gr.verdict) for r in read_results(out) if r.phase == "search"
            for g, gr in r.gradients.items() if gr.verdict != "pass"}


def test_parallel_jobs_keep_every_finding_of_a_case_and_every_face_counts_them_once(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from difftest.config import ENV_VARS

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    r = subprocess.run([sys.executable, "-m", "difftest", "run", *BACKENDS, "--jobs", "2", "--no-shrink",
                        "--examples", "30", "--rounds", "1", "--seed", "0", "--no-database", "--out", str(out),
                        "--json", "--junit", str(out / "junit.xml")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    by_case = {}
    for rec in read_results(out):
        if rec.finding is not None:
            by_case.setdefault((rec.case_id, rec.backend), set()).add(rec.finding)
    assert any(len(keys) > 1 for keys in by_case.values()), "no case showed two findings of one backend"
    counts = faces(out, r.stderr, doc, tmp_path)
    assert len(set(counts.values())) == 1, counts
    # with --no-shrink every finding is a searched case's, and every key a searched case showed is one
    assert {FindingKey(f["backend"], f["gradient"], f["verdict"]) for f in doc["findings"]} == seen_keys(out)


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(budget=st.floats(0.2, 2.5), seed=st.integers(0, 3))
def test_every_face_counts_the_same_findings_whatever_the_budget(budget, seed, tmp_path_factory, capsys):
    """Wherever the time runs out — while searching, mid-shrink, before shrinking — every key a searched
    case showed is recorded as a finding (shrunk or its first case; shrinking may find more) and every
    face agrees. (What is searched depends on the machine's speed; what is asserted does not.)"""
    tmp = tmp_path_factory.mktemp("budget")
    out = tmp / "out"
    code = main(["run", "--backend", "emu-tf32", "--backend", "emu-rtz-acc", "--backend", "numpy-bfloat16",
                 "--jobs", "1", "--time-budget", f"{budget:.3f}", "--seed", str(seed), "--no-database",
                 "--out", str(out), "--junit", str(out / "junit.xml")])
    captured = capsys.readouterr()
    assert code in (0, 1)
    counts = faces(out, captured.err, None, tmp)
    assert len(set(counts.values())) == 1, (budget, seed, counts)
    assert seen_keys(out) <= {r.finding for r in findings(read_results(out))}
