"""The pytest plugin: campaign items with reproducers in failures, xdist and junitxml, user assertions."""

import numpy as np
import pytest

from difftest import Case, assert_within_bounds

pytest_plugins = ["pytester"]


def test_campaign_items_pass_for_the_nf_reference(pytester):
    r = pytester.runpytest_subprocess("--difftest", "--difftest-backend", "nf-binary16", "--difftest-time-budget", "4",
                                      "--difftest-out", str(pytester.path / "out"), "-p", "no:cacheprovider")
    r.assert_outcomes(passed=3)


def test_campaign_failures_name_the_shrunk_reproducer_and_work_with_xdist_and_junit(pytester):
    xml = pytester.path / "junit.xml"
    r = pytester.runpytest_subprocess(
        "--difftest", "--difftest-backend", "torch-cpu-float32", "--difftest-backend", "nf-binary32",
        "--difftest-time-budget", "8", "--difftest-out", str(pytester.path / "out"),
        "-n", "2", "--dist", "loadgroup", f"--junitxml={xml}", "-p", "no:cacheprovider",
    )
    outcomes = r.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 6
    assert outcomes.get("failed", 0) >= 1  # torch's order findings
    text = r.stdout.str()
    assert "reproduce: difftest check" in text and "--backend torch-cpu-float32" in text
    assert "nf-binary32" not in " ".join(line for line in text.splitlines() if line.startswith("FAILED"))
    assert xml.is_file() and "difftest[torch-cpu-float32:" in xml.read_text()


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
