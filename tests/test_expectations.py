"""Expected findings: declared behaviours are shown as such, do not fail, and stay true."""

import pytest

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.cli import main
from difftest.errors import DifftestError
from difftest.expectations import REACHED_CASES, Expectations
from difftest.report import render
from difftest.results import findings
from difftest.store import read_expected

DECLARED = """
[[expected]]
backend = "numpy-float*"
gradient = "grad_bias"
verdict = "order"
reason = "numpy's pairwise sum reassociates the bias gradient"

[[expected]]
backend = "numpy-float32"
verdict = "precision"
format = "binary32"
geometry = { C = [4, ""] }
reason = "never seen: kept to show the not-seen list"

[[expected]]
backend = "torch-cuda-*"
verdict = "precision"
reason = "a backend that does not run here: not judged"
"""


def write(tmp_path, text=DECLARED):
    path = tmp_path / "expected.toml"
    path.write_text(text)
    return Expectations.load(path)


def test_entries_match_by_pattern_verdict_format_and_geometry(tmp_path):
    e = write(tmp_path)
    geo = {"N": 1, "C": 5}
    assert e.explain("numpy-float64", "grad_bias", "order", "binary64", geo).reason.startswith("numpy's pairwise")
    assert e.explain("numpy-float64", "grad_weight", "order", "binary64", geo) is None
    assert e.explain("torch-cpu-float32", "grad_bias", "order", "binary32", geo) is None
    assert e.explain("numpy-float32", "grad_input", "precision", "binary32", geo) is not None
    assert e.explain("numpy-float32", "grad_input", "precision", "binary32", {"C": 3}) is None  # C below 4
    assert e.explain("numpy-float32", "grad_input", "precision", "binary16", geo) is None


def test_geometry_constraints_cover_groups_dilation_and_per_axis_values(tmp_path):
    from difftest.expectations import Expected

    e = Expected("x", "order", "r", geometry={"stride": [2, ""], "groups": [2, ""]})
    assert e.matches("x", "grad_input", "order", "binary32", {"stride": 2, "groups": 4})
    assert not e.matches("x", "grad_input", "order", "binary32", {"stride": [2, 1], "groups": 4})  # one axis below
    assert e.matches("x", "grad_input", "order", "binary32", {"stride": [3, 2], "groups": 4})
    assert not e.matches("x", "grad_input", "order", "binary32", {"stride": 2})  # an older record: groups 1
    assert Expected("x", "order", "r", geometry={"dilation": 1}).matches("x", "g", "order", "f", {"N": 1})


@pytest.mark.parametrize("text, message", [
    ('[[expected]]\nbackend = "x"\nverdict = "pass"\nreason = "r"', "verdict must be one of"),
    ('[[expected]]\nbackend = "x"\nverdict = "order"', "'reason' must be a non-empty string"),
    ('[[expected]]\nbackend = "x"\nverdict = "order"\nreason = "r"\ncolour = 1', "unknown keys colour"),
    ('[[expected]]\nbackend = "x"\nverdict = "order"\nreason = "r"\ngeometry = { Q = 1 }', "geometry keys"),
    ('[[expected]\n', "not valid TOML"),
])
def test_a_bad_declaration_is_refused_naming_the_entry(tmp_path, text, message):
    with pytest.raises(DifftestError, match=message):
        write(tmp_path, text)


def test_a_campaign_keeps_its_expectations_and_the_report_marks_expected_and_not_reached(tmp_path):
    e = write(tmp_path)
    out = tmp_path / "out"
    # seed 1: a seed whose 40 draws show numpy's bias reassociation (search power is tested in test_hardware)
    cfg = CampaignConfig(backends=[get_backend("numpy-float32")], out=out, database=None, progress=False, seed=1,
                         examples=40, rounds=1, expectations=e)
    records = Campaign(cfg).run()
    assert any(r.finding.gradient == "grad_bias" for r in findings(records))
    assert read_expected(out).entries == e.entries
    # 40 draws, few of them with 4 channels or more: no evidence that the C >= 4 declaration is gone
    assert e.not_seen(records) == []
    (unreached,) = e.not_reached(records)
    assert unreached.entry.reason == "never seen: kept to show the not-seen list" and unreached.cases < REACHED_CASES
    assert [c.state for c in e.coverage(records)] == ["seen", "not reached"]  # the CUDA one is not judged
    text = render([out], tmp_path / "r.html").read_text()
    assert "numpy&#39;s pairwise sum reassociates the bias gradient" in text and '<span class="expected">expected</span>' in text
    assert "Expected findings not reached in this run (1)" in text and "not seen any more" not in text
    assert "a backend that does not run here" not in text


def test_a_declaration_searched_enough_that_matched_nothing_is_not_seen_any_more(tmp_path):
    e = write(tmp_path, DECLARED + """
[[expected]]
backend = "numpy-float32"
gradient = "grad_weight"
verdict = "domain"
reason = "campaign values never overflow: never seen"
""")
    cfg = CampaignConfig(backends=[get_backend("numpy-float32")], out=tmp_path / "out", database=None, progress=False,
                         seed=1, examples=REACHED_CASES + 20, rounds=1, expectations=e, shrink=False)
    records = Campaign(cfg).run()
    coverage = {c.entry.reason: c for c in e.coverage(records)}
    gone = coverage["campaign values never overflow: never seen"]
    searched = {r.case_id for r in records if r.phase == "search" and "grad_weight" in r.gradients}
    assert gone.cases == len(searched) >= REACHED_CASES and gone.shown == 0 and gone.state == "not seen any more"
    assert "campaign values never overflow: never seen" in [x.reason for x in e.not_seen(records)]
    c4 = coverage["never seen: kept to show the not-seen list"]  # only cases of 4 channels or more count
    wide = {r.case_id for r in records if r.phase == "search" and r.geometry["C"] >= 4}
    assert c4.cases == len(wide) < REACHED_CASES and c4.state == "not reached"


def _run(tmp_path, name, *extra):
    return main(["run", "--backend", "numpy-float32", "--examples", "40", "--rounds", "1", "--seed", "1",
                 "--out", str(tmp_path / name), "--no-database", "--no-report", "--quiet", *extra])


#: numpy's GEMMs are blocked BLAS calls: real-layer cases with probes show it in 40 draws too.
GEMMS = """
[[expected]]
backend = "numpy-float32"
gradient = "grad_input"
verdict = "order"
reason = "BLAS blocks the input gradient's GEMM"

[[expected]]
backend = "numpy-float32"
gradient = "grad_weight"
verdict = "order"
reason = "BLAS blocks the weight gradient's GEMM"
"""


def test_run_with_expectations_passes_on_declared_findings_and_says_what_is_not_seen(tmp_path, capsys):
    path = tmp_path / "expected.toml"
    path.write_text(DECLARED + GEMMS)
    assert _run(tmp_path, "plain") == 1
    capsys.readouterr()
    assert _run(tmp_path, "declared", "--expected", str(path)) == 0
    out = capsys.readouterr().out
    assert "expected: numpy's pairwise sum reassociates the bias gradient" in out
    assert f"expected findings not reached in this run (fewer than {REACHED_CASES} cases they could show on):" in out
    assert "never seen: kept to show the not-seen list [" in out and "torch-cuda" not in out
    # merged result directories keep what they were judged with
    assert main(["merge", str(tmp_path / "declared"), "--out", str(tmp_path / "merged"), "--no-report"]) == 0
    assert read_expected(tmp_path / "merged").entries == Expectations.load(path).entries


def test_an_undeclared_finding_still_fails_and_the_environment_names_the_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "expected.toml"
    path.write_text(DECLARED.replace('gradient = "grad_bias"', 'gradient = "grad_weight"'))
    monkeypatch.setenv("DIFFTEST_EXPECTED", str(path))
    assert _run(tmp_path, "env") == 1  # the bias finding is not the declared one


def test_check_marks_a_declared_verdict_and_exits_0(tmp_path, capsys):
    path = tmp_path / "expected.toml"
    path.write_text(DECLARED)
    args = ["check", "examples/cancellation.npz", "--backend", "numpy-float32"]
    assert main(args) == 1
    capsys.readouterr()
    assert main([*args, "--expected", str(path)]) == 0
    assert "expected: numpy's pairwise sum reassociates the bias gradient" in capsys.readouterr().out


pytest_plugins = ["pytester"]


def test_the_pytest_plugin_passes_declared_findings(pytester, tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(DECLARED + GEMMS)
    args = ["--difftest", "--difftest-backend", "numpy-float32", "--difftest-examples", "40", "--difftest-rounds", "1",
            "--difftest-seed", "1",
            "--difftest-database", str(tmp_path / "db"), "-p", "no:cacheprovider"]
    plain = pytester.runpytest_subprocess(*args, "--difftest-out", str(tmp_path / "a"))
    outcomes = plain.parseoutcomes()  # grad_bias: order, and numpy's GEMMs may show theirs too
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("failed", 0) + outcomes.get("passed", 0) == 3
    assert "FAILED difftest::numpy-float32::grad_bias" in plain.stdout.str()
    declared = pytester.runpytest_subprocess(*args, "--difftest-out", str(tmp_path / "b"), "--difftest-expected", str(path))
    declared.assert_outcomes(passed=3)
    bad = pytester.runpytest_subprocess(*args, "--difftest-expected", str(tmp_path / "missing.toml"))
    assert bad.ret == 4 and "does not exist" in bad.stderr.str()
