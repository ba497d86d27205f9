"""No RuntimeWarning leaks from difftest's arithmetic or from a backend's overflow: the verdict says it."""

import subprocess
import sys

import numpy as np
import pytest

from difftest import Case
from difftest.check import check_case
from difftest.formats import BINARY16, BINARY64

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'difftest[torch]')")


def normal(fmt, *shape, seed=0):
    return fmt.round_array(np.random.default_rng(seed).standard_normal(shape))


def test_long_binary16_sums_warn_nothing():
    case = Case(normal(BINARY16, 1, 2, 48, 48), normal(BINARY16, 2, 2, 3, 3, seed=1), normal(BINARY16, 1, 2, 48, 48, seed=2),
                stride=1, padding=1, format=BINARY16)  # grad_weight sums 2304 terms: n·u > 1
    assert [r.verdict for r in check_case(case, ["numpy-float16", "torch-cpu-float16", "nf-binary16"])] == ["pass"] * 3


def test_values_across_the_float64_span_warn_nothing():
    x = np.array([2.0**470, -(2.0**470), 2.0**-1074, 3.0]).reshape(1, 1, 2, 2)
    w = np.array([2.0**9, -(2.0**-60)]).reshape(2, 1, 1, 1)
    d = np.array([2.0**-1000, 1.0, 2.0**400, -1.0, 5, 6, 7, 8]).reshape(1, 2, 2, 2)
    results = check_case(Case(x, w, d, format=BINARY64), ["numpy-float64", "torch-cpu-float64", "nf-binary64"])
    assert all(r.verdict in ("pass", "order") for r in results)


def test_a_backend_overflowing_to_inf_is_a_verdict_not_a_warning():
    big = np.full((1, 1, 4, 4), 60000.0)
    case = Case(big, np.full((1, 1, 3, 3), 2.0), big[:, :, :2, :2], format=BINARY16)
    verdicts = [r.verdict for r in check_case(case, ["numpy-float16", "torch-cpu-float16", "nf-binary16"])]
    assert verdicts == ["domain", "domain", "pass"]


def test_a_campaign_prints_no_warning(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-m", "difftest", "run", "--backend", "numpy-float16", "--backend", "nf-binary16",
         "--backend", "numpy-float32", "--examples", "40", "--rounds", "1", "--seed", "2", "--out", str(tmp_path),
         "--no-database", "--no-report", "--fail-on", "never"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr
