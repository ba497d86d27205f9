"""Huge cases are estimated before they are judged: refused above the memory limit, with progress."""

import numpy as np
import pytest

from difftest import Case
from difftest.check import check_case
from difftest.estimate import CaseTooLarge, estimate, parse_size
from difftest.geometry import Geometry


def test_the_issue_s_huge_layer_is_refused_at_once_with_its_estimate():
    g = Geometry(1, 512, 224, 224, 64, 7, 7, 1, 3)
    e = estimate(g)
    assert e.peak_bytes > 24 * 2**30  # the layer that ran out of memory after 12.5 s
    x = np.zeros(g.input_shape, dtype=np.float32)  # values do not matter: nothing is computed
    case = Case(x, np.zeros(g.weight_shape, dtype=np.float32), np.zeros(g.grad_output_shape, dtype=np.float32),
                stride=1, padding=3)
    with pytest.raises(CaseTooLarge, match=r"GiB of memory .* above the limit of 1\.0 GiB; .*--max-memory"):
        check_case(case, ["nf-binary32"], max_memory=2**30)


def test_estimates_grow_with_the_work_and_are_not_below_a_measured_small_case():
    small, large = estimate(Geometry(1, 8, 16, 16, 8, 3, 3, 1, 1)), estimate(Geometry(1, 64, 56, 56, 64, 3, 3, 1, 1))
    assert small.seconds < large.seconds and small.peak_bytes < large.peak_bytes
    assert large.peak_bytes >= 184 * 2**20  # measured peak (tracemalloc) on the development machine


def test_a_case_estimated_above_the_progress_threshold_reports_its_stages(monkeypatch):
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32).astype(np.float64)  # noqa: E731
    case = Case(r(1, 3, 64, 64), r(16, 3, 7, 7), r(1, 16, 32, 32), stride=2, padding=3)
    heard = []
    check_case(case, ["nf-binary32"], progress=heard.append)
    assert heard == []  # estimated below the threshold: quiet
    monkeypatch.setattr("difftest.estimate.PROGRESS_SECONDS", estimate(case.geometry).seconds / 2)
    check_case(case, ["nf-binary32"], progress=heard.append)
    assert heard[0].startswith(f"{case.geometry.O * case.geometry.C * 49 * 32 * 32 / 1e6:.1f} M multiply-adds")
    assert heard[0].endswith("; running nf-binary32")  # the backend runs first, then the judging
    assert heard[1:] == ["exact spec", "NF model and bounds in binary32"]


@pytest.mark.parametrize("text, size", [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("1000", 1000)])
def test_memory_sizes_parse(text, size):
    assert parse_size(text) == size


def test_the_cli_refuses_a_huge_case_at_once_with_exit_2(tmp_path):
    import subprocess
    import sys

    g = Geometry(1, 512, 224, 224, 64, 7, 7, 1, 3)
    z = lambda shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    Case(z(g.input_shape), z(g.weight_shape), z(g.grad_output_shape), stride=1, padding=3).save(tmp_path / "huge.npz")
    for args in (["check", str(tmp_path / "huge.npz"), "--backend", "nf-binary32"],
                 ["bounds", str(tmp_path / "huge.npz"), "--out", str(tmp_path / "b.npz"), "--max-memory", "2G"]):
        p = subprocess.run([sys.executable, "-m", "difftest", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "GiB of memory" in p.stderr
        assert "Traceback" not in p.stderr
