"""The pytest plugin: campaign items are collected items, each backend's campaign runs once (also under
xdist), failures name the reproducers, junitxml works, options are checked; user assertions.

Every campaign here is bounded by work (``--difftest-examples``, ``--difftest-rounds``) and a seed,
never by time: what it checks does not depend on the machine's speed or load."""

import json
import re

import numpy as np
import pytest

from difftest import Case, assert_within_bounds
from difftest.backends import get_backend

pytest_plugins = ["pytester"]


def difftest_args(pytester, *backends, examples=10, rounds=1, seed=0):
    args = ["--difftest", "--difftest-examples", str(examples), "--difftest-rounds", str(rounds),
            "--difftest-seed", str(seed), "--difftest-out", str(pytester.path / "out"),
            "--difftest-database", str(pytester.path / "db"), "-p", "no:cacheprovider"]
    for b in backends:
        args += ["--difftest-backend", b]
    return args


def campaign_dirs(pytester) -> list[str]:
    return sorted(p.parent.relative_to(pytester.path / "out").as_posix()
                  for p in (pytester.path / "out").rglob("campaign.json"))


def test_campaign_items_are_collected_items_that_collect_only_and_k_see(pytester):
    args = difftest_args(pytester, "nf-binary16", "nf-bfloat16")
    r = pytester.runpytest(*args, "--collect-only", "-q")
    assert r.ret == pytest.ExitCode.OK
    ids = [line for line in r.outlines if line.startswith("difftest::")]
    assert ids == [f"difftest::{b}::{g}" for b in ("nf-binary16", "nf-bfloat16")
                   for g in ("grad_input", "grad_weight", "grad_bias")]
    r.stdout.fnmatch_lines(["6 tests collected*"])
    r = pytester.runpytest(*args, "--collect-only", "-k", "grad_bias and nf-binary16")
    r.stdout.fnmatch_lines(["collected 6 items / 5 deselected / 1 selected", "*<CampaignItem grad_bias>*",
                            "*1/6 tests collected (5 deselected)*"])
    r = pytester.runpytest(*args, "--collect-only", "-q", "-m", "not difftest")
    assert r.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert campaign_dirs(pytester) == []  # collecting runs no campaign


def test_campaign_items_pass_for_the_nf_reference_and_k_runs_one_campaign(pytester):
    r = pytester.runpytest_subprocess(*difftest_args(pytester, "nf-binary16"))
    r.stdout.fnmatch_lines(["collected 3 items"])
    r.assert_outcomes(passed=3)
    info = json.loads((pytester.path / "out" / "nf-binary16" / "campaign.json").read_text())
    assert info["status"] == "complete" and info["examples_per_round"] == 10 and info["rounds"] == 1
    r = pytester.runpytest_subprocess(*difftest_args(pytester, "nf-binary16"), "-k", "grad_bias")
    r.stdout.fnmatch_lines(["collected 3 items / 2 deselected / 1 selected"])
    r.assert_outcomes(passed=1, deselected=2)
    # one campaign each session; the first session's results are kept aside, not replaced
    assert campaign_dirs(pytester) == ["nf-binary16", "nf-binary16.previous"]


def test_campaign_failures_name_the_shrunk_reproducer_and_each_campaign_runs_once_under_xdist(pytester):
    # torch's bias gradient is `order` on structured cancellation: 3 rounds of 30 examples found it with
    # seeds 2-5 (and an example database), not with 0 and 1
    xml = pytester.path / "junit.xml"
    r = pytester.runpytest_subprocess(
        *difftest_args(pytester, "torch-cpu-float32", "nf-binary32", examples=30, rounds=3, seed=2),
        "-n", "2", "--dist", "loadgroup", f"--junitxml={xml}", "-v",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 6
    text = r.stdout.str()
    assert "FAILED difftest::torch-cpu-float32::grad_bias" in text  # torch's order finding
    assert "reproduce: difftest check" in text and "--backend torch-cpu-float32" in text
    assert "nf-binary32" not in " ".join(line for line in text.splitlines() if line.startswith("FAILED"))
    assert xml.is_file() and 'classname="difftest.torch-cpu-float32"' in xml.read_text()
    # each backend's items ran on one worker, which ran its campaign once, into one directory
    workers = {}
    for worker, backend in re.findall(r"^\[(gw\d+)\].*? (?:PASSED|FAILED) difftest::([\w.-]+)::", text, flags=re.M):
        workers.setdefault(backend, set()).add(worker)
    assert {b: len(w) for b, w in workers.items()} == {"torch-cpu-float32": 1, "nf-binary32": 1}
    assert campaign_dirs(pytester) == ["nf-binary32", "torch-cpu-float32"]


def test_an_unknown_backend_is_a_usage_error_naming_the_known_ones(pytester):
    r = pytester.runpytest(*difftest_args(pytester, "nf-binary16", "no-such-backend"))
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["ERROR: --difftest-backend: unknown backend 'no-such-backend'; known: *nf-binary16*"])
    assert "INTERNALERROR" not in r.stdout.str() + r.stderr.str()


def test_an_unavailable_backend_skips_its_items_saying_why(pytester):
    ok, reason = get_backend("torch-cuda-float32").availability()
    if ok:
        pytest.skip("CUDA is available here")
    r = pytester.runpytest(*difftest_args(pytester, "torch-cuda-float32"), "-rs")
    r.assert_outcomes(skipped=3)
    assert f"torch-cuda-float32 is not available here: {reason}" in r.stdout.str()


@pytest.mark.parametrize("option", [["--difftest-examples", "0"], ["--difftest-rounds", "0"],
                                    ["--difftest-time-budget", "0"], ["-n", "2", "--dist", "load"]],
                         ids=["examples", "rounds", "time-budget", "dist-load"])
def test_bad_options_are_usage_errors(pytester, option):
    r = pytester.runpytest(*difftest_args(pytester, "nf-binary16"), *option)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in r.stdout.str() + r.stderr.str()
    assert campaign_dirs(pytester) == []


def test_assert_within_bounds_accepts_the_nf_reference_and_explains_a_failure(tmp_path):
    d = np.array([2, 3, 3, 3, 2, 2.0**24 * 4, -(2.0**24) * 4, 3, 3, 4, 4, 3, 4, 2, 2, 2, 3, 3, 3, 2, 4, 2, 2, 4, 3, 3]) / 4
    case = Case(np.ones((1, 1, 1, d.size)), np.ones((1, 1, 1, 1)), d.reshape(1, 1, 1, -1))
    assert assert_within_bounds(case, "nf-binary32").verdict == "pass"
    with pytest.raises(AssertionError, match="grad_bias: order") as failure:
        assert_within_bounds(case, "numpy-float32", save_to=tmp_path)
    saved = tmp_path / f"{case.case_id}.npz"
    assert f"reproduce: difftest check {saved} --backend numpy-float32" in str(failure.value)
    assert Case.load(saved).case_id == case.case_id
    assert_within_bounds(case, "numpy-float32", bound="order-free")
    with pytest.raises(ValueError):
        assert_within_bounds(case, "numpy-float32", bound="loose")


def test_the_plugin_takes_its_settings_from_tool_difftest_as_run_does(pytester):
    """The configuration names two backends and fails on precision only: the plugin collects those
    two (not every available backend) and passes numpy's order findings (seed 1 shows its bias order)."""
    pytester.makepyprojecttoml("""
[tool.difftest]
backends = ["numpy-float32", "nf-binary32"]
fail_on = "precision"
seed = 1
database = false
""")
    args = ["--difftest", "--difftest-examples", "30", "--difftest-rounds", "1", "--difftest-out",
            str(pytester.path / "out"), "-p", "no:cacheprovider"]
    collected = pytester.runpytest_subprocess(*args, "--collect-only", "-q")
    assert "6 tests collected" in collected.stdout.str()
    r = pytester.runpytest_subprocess(*args)
    r.assert_outcomes(passed=6)
    records = [json.loads(line) for line in (pytester.path / "out" / "numpy-float32" / "results.jsonl").read_text().splitlines()]
    assert any(g["verdict"] == "order" for rec in records for g in rec["gradients"].values())  # seen, not failed
    assert {rec["seed"] for rec in records} == {1} and not (pytester.path / ".difftest").exists()
    # an option on the command line still wins
    failing = pytester.runpytest_subprocess(*args, "--difftest-fail-on", "order", "--difftest-out", str(pytester.path / "o2"))
    assert failing.parseoutcomes().get("failed", 0) >= 1
