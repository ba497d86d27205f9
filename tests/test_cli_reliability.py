"""The CLI under real conditions: merges that cannot eat their inputs, one run per result directory,
environment errors as one line and exit 2, closed pipes, JSON and JUnit for CI, an honest --quiet."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest

from difftest import __version__
from difftest.backends import get_backend
from difftest.check import check_case
from difftest.case import Case
from difftest.cli import main
from difftest.config import ENV_VARS
from difftest.geometry import GRADIENTS
from difftest.outcome import FindingKey
from difftest.progress import Progress
from difftest.lock import DirectoryInUse
from difftest.store import Recorder, StoreWriter, read_results
from difftest.summary import junit_xml, summary_doc

ROOT = Path(__file__).resolve().parents[1]
CANCELLATION = ROOT / "examples" / "cancellation.npz"
SMALL_RUN = ["--backend", "nf-binary16", "--examples", "5", "--rounds", "1", "--seed", "1", "--no-database",
             "--profile", "quick", "--fail-on", "order"]


@pytest.fixture(autouse=True)
def no_config(monkeypatch, tmp_path):
    """No DIFFTEST_* variable of the caller and no [tool.difftest] table changes these tests."""
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    (work / "pyproject.toml").write_text("[project]\nname = 'elsewhere'\n")
    monkeypatch.chdir(work)


def difftest(*args, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    return subprocess.run([sys.executable, "-m", "difftest", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def one_error_line(err: str) -> str:
    """stderr is exactly one 'difftest: error: ...' line (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difftest: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small result directories (real campaigns), copied by the tests that change them."""
    base = tmp_path_factory.mktemp("runs")
    for name, seed in (("A", "1"), ("B", "2")):
        args = ["run", *SMALL_RUN, "--seed", seed, "--out", str(base / name), "--quiet", "--no-report"]
        assert main(args) == 0
    return base


@pytest.fixture
def a_b(runs, tmp_path):
    base = tmp_path / "base"
    for name in ("A", "B"):
        shutil.copytree(runs / name, base / name)
    return base / "A", base / "B"


def _lines(d: Path) -> str:
    return (d / "results.jsonl").read_text()


# --- 1. merge ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["an input", "inside an input", "containing an input"])
def test_merge_refuses_an_output_that_is_an_input_inside_one_or_containing_one(a_b, where, capsys):
    a, b = a_b
    before = _lines(a)
    out = {"an input": a, "inside an input": a / "merged", "containing an input": a.parent}[where]
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(out) in line
    assert _lines(a) == before and _lines(b) and not (a / "merged").exists()


def test_a_merge_that_fails_leaves_no_output_and_keeps_an_existing_one(a_b, tmp_path, capsys):
    a, b = a_b
    garbage = tmp_path / "garbage"
    shutil.copytree(b, garbage)
    lines = _lines(garbage).splitlines()
    (garbage / "results.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")

    out = tmp_path / "new" / "merged"
    assert main(["merge", str(a), str(garbage), "--out", str(out)]) == 2
    assert "results.jsonl:2" in one_error_line(capsys.readouterr().err)
    assert not out.exists() and not out.parent.exists()

    assert main(["merge", str(a), "--out", str(out)]) == 0
    before = _lines(out)
    assert main(["merge", str(a), str(garbage), "--out", str(out)]) == 2
    assert _lines(out) == before  # replaced only by a complete merge
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # no temporary directory left


def test_merge_replaces_a_result_directory_whole_and_writes_its_report(a_b, tmp_path, capsys):
    a, b = a_b
    out = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert main(["merge", str(a), "--out", str(out), "--no-report"]) == 0
    assert {(r.case_id, r.backend, r.phase) for r in read_results(out)} == {
        (r.case_id, r.backend, r.phase) for r in read_results(a)}
    assert not (out / "report.html").exists()
    captured = capsys.readouterr()
    assert "merged 1 directory: " in captured.out and " result lines, 0 findings -> " in captured.out
    # the merge it replaced is kept aside, whole, and said so
    assert (tmp_path / "m.previous" / "report.html").is_file()
    assert f"the previous results in {out} are kept in {out}.previous" in captured.err


def test_merge_refuses_an_existing_directory_that_is_not_a_result_directory(a_b, tmp_path, capsys):
    a, _ = a_b
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["merge", str(a), "--out", str(mine)]) == 2
    assert "not a difftest result directory" in one_error_line(capsys.readouterr().err)
    assert (mine / "notes.txt").read_text() == "keep me"


# --- 2. one run per result directory -----------------------------------------------------------

HOLD = """
import sys
from pathlib import Path
from difftest.lock import DirectoryLock
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
lock = DirectoryLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
if sys.argv[2] == "crash":
    import os
    os._exit(0)  # dies holding the lock, as a killed run would
sys.stdin.read()
lock.release()
"""


def hold(out: Path, how: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_run_on_the_same_directory_refuses_naming_the_holder(runs, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(runs / "A", out)
    before = _lines(out)
    holder = hold(out, "wait")
    try:
        assert main(["run", *SMALL_RUN, "--out", str(out), "--quiet"]) == 2
        line = one_error_line(capsys.readouterr().err)
        lock = json.loads((out / ".lock").read_text())
        assert f"pid {holder.pid}" in line and f"started {lock['started']}" in line
        assert lock["pid"] == holder.pid and {"host", "started"} <= set(lock)
        assert main(["merge", str(runs / "B"), "--out", str(out)]) == 2  # nor replaced by a merge
        assert f"pid {holder.pid}" in one_error_line(capsys.readouterr().err)
        assert _lines(out) == before  # nothing of the holder's directory was touched
    finally:
        holder.communicate("", timeout=60)
    assert not (out / ".lock").exists()  # released on close
    assert main(["run", *SMALL_RUN, "--out", str(out), "--quiet"]) == 0
    assert not (out / ".lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold(out, "crash")
    holder.wait(timeout=60)
    assert json.loads((out / ".lock").read_text())["pid"] == holder.pid
    assert main(["run", *SMALL_RUN, "--out", str(out), "--quiet"]) == 0
    assert not (out / ".lock").exists() and read_results(out)


def test_writers_in_one_process_exclude_each_other_until_closed(tmp_path):
    first = StoreWriter(tmp_path / "d")
    with pytest.raises(DirectoryInUse, match=f"pid {os.getpid()} "):
        StoreWriter(tmp_path / "d")
    first.close()
    StoreWriter(tmp_path / "d").close()
    assert not (tmp_path / "d" / ".lock").exists()


def test_ctrl_c_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    proc = subprocess.Popen([sys.executable, "-m", "difftest", "run", "--backend", "nf-binary16", "--examples", "1000",
                             "--rounds", "1000", "--no-database", "--quiet", "--no-report", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120  # a guard against a hang, not a bound of the test's work
    while not (out / "results.jsonl").is_file() or not (out / "results.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    assert (out / ".lock").exists()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert not (out / ".lock").exists()


# --- 3. environment errors: one line, exit 2 --------------------------------------------------

@pytest.fixture
def blocked(tmp_path) -> Path:
    """A regular file: every path under it is unwritable, also for root."""
    f = tmp_path / "file"
    f.write_text("")
    return f


def _commands(runs: Path, blocked: Path) -> dict:
    return {
        "run --out FILE": ["run", *SMALL_RUN, "--out", blocked],
        "run --out FILE/x": ["run", *SMALL_RUN, "--out", blocked / "x"],
        "run --junit FILE/x": ["run", *SMALL_RUN, "--out", blocked.parent / "o", "--junit", blocked / "x" / "j.xml"],
        "check --save FILE/x": ["check", CANCELLATION, "--backend", "nf-binary32", "--save", blocked / "x"],
        "bounds --out FILE/x": ["bounds", CANCELLATION, "--out", blocked / "x" / "b.npz"],
        "report -o FILE/x": ["report", runs / "A", "-o", blocked / "x" / "r.html"],
        "merge --out FILE/x": ["merge", runs / "A", "--out", blocked / "x"],
    }


@pytest.mark.parametrize("name", ["run --out FILE", "run --out FILE/x", "run --junit FILE/x", "check --save FILE/x",
                                  "bounds --out FILE/x", "report -o FILE/x", "merge --out FILE/x"])
def test_an_unwritable_output_is_one_line_and_exit_2(runs, blocked, name, capsys):
    args = _commands(runs, blocked)[name]
    assert main([str(a) for a in args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(blocked) in line and ("not a directory" in line.lower())


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="no /etc/passwd here")
def test_check_save_under_etc_passwd_is_one_line_and_exit_2(capsys):
    assert main(["check", str(CANCELLATION), "--backend", "nf-binary32", "--save", "/etc/passwd/x"]) == 2
    assert "/etc/passwd/x" in one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories: chmod proves nothing")
@pytest.mark.parametrize("name", ["run", "check", "bounds", "report", "merge"])
def test_a_read_only_directory_is_one_line_and_exit_2(runs, tmp_path, name, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        args = {"run": ["run", *SMALL_RUN, "--out", ro / "x"],
                "check": ["check", CANCELLATION, "--backend", "nf-binary32", "--save", ro / "x"],
                "bounds": ["bounds", CANCELLATION, "--out", ro / "b.npz"],
                "report": ["report", runs / "A", "-o", ro / "r.html"],
                "merge": ["merge", runs / "A", "--out", ro / "m"]}[name]
        assert main([str(a) for a in args]) == 2
        one_error_line(capsys.readouterr().err)
    finally:
        ro.chmod(0o700)


def test_debug_shows_the_traceback_and_still_exits_2(blocked):
    quiet = difftest("run", *SMALL_RUN, "--out", blocked)
    assert quiet.returncode == 2
    one_error_line(quiet.stderr)
    for args in (["--debug", "run", *SMALL_RUN, "--out", blocked], ["run", "--debug", *SMALL_RUN, "--out", blocked]):
        loud = difftest(*args)
        assert loud.returncode == 2 and "Traceback" in loud.stderr
        assert loud.stderr.strip().splitlines()[-1].startswith("difftest: error: ")


@pytest.mark.parametrize("command", ["report", "merge"])
def test_a_result_line_with_missing_fields_is_one_line_naming_file_and_line(runs, tmp_path, command, capsys):
    d = tmp_path / "d"
    shutil.copytree(runs / "A", d)
    good = _lines(d).splitlines()
    (d / "results.jsonl").write_text("\n".join([good[0], json.dumps({"schema": 2, "backend": "x"}), *good[1:]]) + "\n")
    args = ["report", str(d), "-o", str(tmp_path / "r.html")] if command == "report" else \
        ["merge", str(d), "--out", str(tmp_path / "m")]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{d / 'results.jsonl'}:2" in line and "case_id" in line
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "m").exists()


def huge_case(path: Path) -> Path:
    """A case file whose input declares 2^56 values: more memory than any machine has."""
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("input.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                     "shape": (1, 1, 2**28, 2**28)})
            f.write(b"\0" * 64)
        for name, a in (("weight", np.ones((1, 1, 1, 1))), ("grad_output", np.ones((1, 1, 1, 1))),
                        ("stride", np.int64(1)), ("padding", np.int64(0))):
            with zf.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(a))
    return path


@pytest.mark.parametrize("command", ["check", "bounds"])
def test_a_case_too_large_for_memory_is_one_line_and_exit_2(tmp_path, command):
    case = huge_case(tmp_path / "huge.npz")
    args = ["check", case, "--backend", "nf-binary32"] if command == "check" else \
        ["bounds", case, "--out", tmp_path / "b.npz"]
    r = difftest(*args)
    assert r.returncode == 2
    assert "too large for this machine's memory" in one_error_line(r.stderr)


def test_a_closed_stdout_ends_quietly_with_the_commands_exit_code():
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    p = subprocess.Popen([sys.executable, "-m", "difftest", "check", str(CANCELLATION), "--backend", "numpy-float32",
                          "--backend", "nf-binary32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1  # numpy-float32's bias gradient: order, as without the pipe
    assert err == ""


def test_check_piped_into_head_prints_no_traceback():
    cmd = f"{sys.executable} -m difftest check {CANCELLATION} --backend numpy-float32 --backend nf-binary32 | head -6"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k not in ENV_VARS.values()})
    assert r.returncode == 1 and r.stderr == "" and len(r.stdout.splitlines()) == 6


# --- 4. small truths ---------------------------------------------------------------------------

def test_quiet_prints_nothing_but_the_final_summary(tmp_path, capsys):
    assert main(["run", *SMALL_RUN, "--out", str(tmp_path / "o"), "--quiet", "--no-report"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0].startswith("backend ") and "complete: 5 cases in" in out


def test_counts_are_pluralized(tmp_path, capsys):
    assert main(["run", *SMALL_RUN, "--out", str(tmp_path / "o"), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "1 backend (nf-binary16)" in err and "1 backends" not in err
    assert main(["merge", str(tmp_path / "o"), "--out", str(tmp_path / "m"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "merged 1 directory: " in out and "1 directories" not in out


# --- 5. what CI expects ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    r = difftest(flag)
    assert r.returncode == 0 and r.stdout == f"difftest {__version__}\n"


def test_run_json_is_the_documented_summary(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", *SMALL_RUN, "--out", str(out), "--json", "--no-report"])
    doc = json.loads(capsys.readouterr().out)
    assert {"status", "cases", "duration_s", "out", "findings", "cells", "exit_code"} <= set(doc)
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    judged = {r["case_id"] for r in lines}
    assert 1 <= len(judged) <= 5  # 5 draws; a draw that repeats a judged case is not judged again
    assert doc["exit_code"] == code == 0 and doc["status"] == "complete" and doc["cases"] == len(judged)
    assert doc["out"] == str(out) and doc["findings"] == []
    cell = doc["cells"]["nf-binary16"]["grad_bias"]
    assert set(doc["cells"]["nf-binary16"]) == set(GRADIENTS)
    assert {"cases", "worst_ratio", "worst_ratio_order_free", "counts"} <= set(cell)
    asked = {r["case_id"] for r in lines if "grad_bias" in r["requested"]}  # some cases request a subset
    assert cell["counts"]["pass"] == cell["cases"] == len(asked)


def test_run_junit_has_one_testcase_per_backend_and_gradient(tmp_path, capsys):
    junit = tmp_path / "ci" / "junit.xml"
    assert main(["run", *SMALL_RUN, "--out", str(tmp_path / "o"), "--junit", str(junit), "--quiet", "--no-report"]) == 0
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("difftest.nf-binary16", g) for g in GRADIENTS]
    assert suite.get("tests") == "3" and suite.get("failures") == "0" and not suite.findall(".//failure")


@pytest.fixture
def finding_dir(tmp_path) -> Path:
    """A result directory holding a real finding: numpy-float32's bias gradient on the cancellation case."""
    case = Case.load(CANCELLATION)
    results = check_case(case, [get_backend("numpy-float32"), get_backend("nf-binary32")])
    rec = Recorder(tmp_path / "found", seed=0, shard=(1, 1))
    try:
        rec.record(case, results, "search", 1)
        rec.record(case, [results[0]], "shrunk", 1, findings=[FindingKey("numpy-float32", "grad_bias", "order")])
    finally:
        rec.close()
    return tmp_path / "found"


def test_junit_fails_a_cell_under_fail_on_with_the_mismatch_text(finding_dir):
    records = read_results(finding_dir)
    suite = ET.fromstring(junit_xml(records, "order", replay_dir=finding_dir).split("\n", 1)[1])
    failures = {(c.get("classname"), c.get("name")): c.find("failure") for c in suite.findall("testcase")}
    failed = {k for k, f in failures.items() if f is not None}
    assert failed == {("difftest.numpy-float32", "grad_bias")} and suite.get("failures") == "1"
    f = failures[("difftest.numpy-float32", "grad_bias")]
    assert f.get("type") == "order"
    assert "numpy-float32 grad_bias: order (some entry beyond the TorchLean bound" in f.text
    assert f"difftest check {finding_dir}/cases/" in f.text and "--backend numpy-float32" in f.text
    never = ET.fromstring(junit_xml(records, "precision").split("\n", 1)[1])
    assert not never.findall(".//failure")


def test_summary_doc_lists_findings_with_a_replayable_case_file(finding_dir):
    doc = summary_doc(read_results(finding_dir), replay_dir=finding_dir)
    (f,) = doc["findings"]
    assert f["backend"] == "numpy-float32" and f["gradient"] == "grad_bias" and f["verdict"] == "order"
    assert f["max_ratio"] > 1 > f["max_ratio_order_free"] and Path(f["case_file"]).is_file()
    assert doc["cells"]["numpy-float32"]["grad_bias"]["counts"]["order"] == 1


@pytest.mark.parametrize("fail_on, code", [(None, 1), ("order", 1), ("precision", 0), ("never", 0)])
def test_check_fail_on(fail_on, code, capsys):
    args = ["check", str(CANCELLATION), "--backend", "numpy-float32"] + (["--fail-on", fail_on] if fail_on else [])
    assert main(args) == code


def test_progress_lines_say_how_much_of_the_budget_is_spent(tmp_path, capsys):
    import io

    log = io.StringIO()
    Progress(stream=log, budget=60, started=time.monotonic() - 18.3).update(force=True)
    assert "18 s of 60 s" in log.getvalue()
    assert "s elapsed" in Progress(stream=log, budget=None).elapsed_text()
    # a cap, not a bound: the run ends after its one round of 5 examples
    assert main(["run", *SMALL_RUN, "--time-budget", "600", "--out", str(tmp_path / "o"), "--no-report"]) == 0
    assert " s of 600 s" in capsys.readouterr().err
