"""The commands as a user runs them: tables, JSON, saved outputs, bound files, exit codes."""

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from difftest import lean
from difftest.case import Case
from difftest.cli import main
from difftest.formats import BINARY16
from difftest.geometry import GRADIENTS


@pytest.fixture
def case_file(tmp_path):
    rng = np.random.default_rng(3)
    f16 = lambda *s: rng.standard_normal(s).astype(np.float16).astype(np.float64)  # noqa: E731
    case = Case(f16(2, 2, 5, 4), f16(3, 2, 3, 2), f16(2, 3, 3, 3), stride=2, padding=1, format=BINARY16)
    return case.save(tmp_path / "case.npz")


def test_check_prints_a_verdict_table_and_exits_0_when_all_pass(case_file, capsys):
    assert main(["check", str(case_file), "--backend", "nf-binary16"]) == 0
    out = capsys.readouterr().out
    assert "nf-binary16" in out and out.count(" pass ") == 3
    assert "a documented extension, not a Lean theorem" in out  # N = 2


def test_check_json_has_the_documented_fields(case_file, capsys):
    code = main(["check", str(case_file), "--backend", "nf-binary16", "--backend", "numpy-float32", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["case"]["format"] == "binary16" and doc["case"]["batch_extension"] is True
    assert [r["backend"] for r in doc["results"]] == ["nf-binary16", "numpy-float32"]
    for r in doc["results"]:
        assert set(r["gradients"]) == set(GRADIENTS)
        for g in r["gradients"].values():
            assert {"verdict", "max_ratio", "max_ratio_order_free", "violations", "worst_index"} <= set(g)
    verdicts = [g["verdict"] for r in doc["results"] for g in r["gradients"].values()]
    assert code == (0 if set(verdicts) == {"pass"} else 1)


def test_check_save_writes_each_backends_raw_gradients(case_file, tmp_path, capsys):
    out = tmp_path / "saved"
    main(["check", str(case_file), "--backend", "numpy-float16", "--save", str(out)])
    with np.load(out / "numpy-float16.npz") as z:
        assert set(z.files) == set(GRADIENTS) and z["grad_weight"].shape == (3, 2, 3, 2)


def test_check_exits_1_on_a_finding(tmp_path, capsys):
    # binary32 values checked by a binary16 backend: outside its format -> domain
    case = Case(np.full((1, 1, 2, 2), 0.1, dtype=np.float32).astype(float), np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2)))
    assert main(["check", str(case.save(tmp_path / "c.npz")), "--backend", "numpy-float16"]) == 1


def test_bounds_match_exact_rational_recomputation_of_the_lean_definitions(case_file, tmp_path, capsys):
    out = tmp_path / "b.npz"
    assert main(["bounds", str(case_file), "--out", str(out)]) == 0
    case = Case.load(case_file)
    rt = case.runtime()
    ref = lean.gradients_and_bounds(BINARY16, rt.input, rt.weight, rt.grad_output, case.geometry)
    spec = lean.spec_gradients(case.input, case.weight, case.grad_output, case.geometry)
    with np.load(out) as z:
        assert str(z["format"]) == "binary16"
        for g in GRADIENTS:
            for k in ("exact", "nf", "bound", "bound_order_free"):
                assert z[f"{g}_{k}"].shape == case.geometry.shape_of(g)
            assert [float(s) for s in spec[g].ravel()] == z[f"{g}_exact"].ravel().tolist()
            assert [Fraction(v) for v in z[f"{g}_nf"].ravel()] == list(ref[g][0].ravel())
            for b, rb in zip(z[f"{g}_bound"].ravel(), ref[g][1].ravel()):
                assert rb <= Fraction(b) <= rb * (1 + Fraction(1, 10**9))


def test_bounds_format_option_overrides_the_case_file(case_file, tmp_path, capsys):
    out = tmp_path / "b32.npz"
    assert main(["bounds", str(case_file), "--format", "binary32", "--out", str(out)]) == 0
    with np.load(out) as z:
        assert str(z["format"]) == "binary32"


def test_backends_lists_every_builtin_with_availability(capsys):
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    assert {"numpy-float32", "numpy-float16", "numpy-float64", "nf-binary32", "nf-binary16"} <= set(rows)
    assert all({"name", "available", "reason", "format", "device", "version"} <= set(r) for r in rows.values())


def test_python_dash_m_and_the_console_script_run(case_file):
    for cmd in ([sys.executable, "-m", "difftest"], ["difftest"]):
        r = subprocess.run([*cmd, "check", str(case_file), "--backend", "nf-binary16"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "pass" in r.stdout
    r = subprocess.run([sys.executable, "-m", "difftest", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "check" in r.stdout and "bounds" in r.stdout


def test_round_inputs_shows_the_eps_each_format_is_judged_with(tmp_path, capsys):
    case = Case(np.full((1, 1, 3, 3), 0.1), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), round_inputs=True)
    path = case.save(tmp_path / "c.npz")
    assert main(["check", str(path), "--round-inputs", "--backend", "nf-binary16", "--backend", "nf-binary32"]) == 0
    out = capsys.readouterr().out
    eps16 = abs(float(np.float16(0.1)) - 0.1)
    assert f"binary16 runtime values rounded, eps x/w/δ = {eps16:.3g}/0/0" in out
