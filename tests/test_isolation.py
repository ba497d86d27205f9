"""Backends are untrusted code: real processes that abort, segfault, exit and hang, and what difftest makes
of them — a verdict on that backend, never the end of the run.

The misbehaving backends are ``tests/hostile_backends.py``, named by a spec from a working directory that
holds a copy, as a user's own code would be. Campaigns here are bounded by work and a seed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from difftest.backends import get_backend
from difftest.case import Case
from difftest.check import check_case
from difftest.config import ENV_VARS
from difftest.isolation import Workers, describe_exit
from difftest.store import read_campaign, read_results

ROOT = Path(__file__).resolve().parents[1]
STRIDED = ROOT / "examples" / "stride2_pad1.npz"
HOSTILE = Path(__file__).with_name("hostile_backends.py")


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working directory holding the hostile backends, and no [tool.difftest] above it."""
    shutil.copy(HOSTILE, tmp_path / "hostile_backends.py")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'elsewhere'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def difftest(*args, cwd, env=None, **kw) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()} | (env or {})
    return subprocess.run([sys.executable, "-m", "difftest", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environ, **kw)


def rows(out: str) -> dict:
    """``check``'s table: ``{(backend, gradient): (verdict, message)}``."""
    table, last = {}, None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2].startswith("grad_"):
            last = (parts[0], parts[2])
            table[last] = (parts[3], "")
        elif last is not None and line.startswith(" " * 24) and line.strip():
            table[last] = (table[last][0], line.strip())
            last = None
    return table


def test_exit_codes_are_described_as_the_signal_or_the_code():
    assert describe_exit(-signal.SIGSEGV) == "crashed: SIGSEGV"
    assert describe_exit(-signal.SIGABRT) == "crashed: SIGABRT"
    assert describe_exit(3) == "crashed: exit code 3"


def test_check_with_a_segfaulting_backend_prints_every_other_row_and_exits_1(here):
    r = difftest("check", STRIDED, "--backend", "hostile_backends:segfaulting", "--backend", "numpy-float32",
                 "--backend", "nf-binary32", cwd=here)
    assert r.returncode == 1, r.stderr
    table = rows(r.stdout)
    for g in ("grad_input", "grad_weight", "grad_bias"):
        assert table[("hostile_backends:segfaulting", g)] == ("error", "crashed: SIGSEGV")
        assert table[("numpy-float32", g)][0] == "pass" and table[("nf-binary32", g)][0] == "pass"


def test_an_abort_is_a_crash_that_keeps_the_backends_last_words(here):
    case = Case.load(STRIDED)
    with Workers(timeout=120) as pool:
        (r,) = check_case(case, pool.wrap([get_backend("hostile_backends:loud_abort")]))
    assert {g: x.verdict for g, x in r.gradients.items()} == dict.fromkeys(r.gradients, "error")
    assert r.gradients["grad_input"].message == "crashed: SIGABRT"
    assert "Check failed: stride == 1" in r.error  # what it printed before it died
    assert "in loud_abort" in r.error  # and where: the worker's Python traceback


def test_an_exit_is_a_crash_with_its_exit_code(here):
    with Workers(timeout=120) as pool:
        (r,) = check_case(Case.load(STRIDED), pool.wrap([get_backend("hostile_backends:exiting")]))
    assert r.gradients["grad_bias"].message == "crashed: exit code 3"


def test_a_dead_worker_is_restarted_and_the_other_backends_never_notice(here):
    case = Case.load(STRIDED)
    with Workers(timeout=120) as pool:
        backends = pool.wrap([get_backend("hostile_backends:segfaulting"), get_backend("numpy-float32")])
        numpy_worker = None
        for _ in range(3):
            crashed, numpy = check_case(case, backends)
            assert crashed.verdict == "error" and numpy.verdict == "pass"
            numpy_worker = numpy_worker or backends[1]._worker.process.pid
            assert backends[1]._worker.process.pid == numpy_worker  # the same worker for every case
        assert pool.starts("hostile_backends:segfaulting") == 3  # one new worker per crash


def test_backend_timeout_ends_a_hanging_backend_in_seconds_and_says_where_it_hung(here):
    t0 = time.monotonic()
    r = difftest("check", STRIDED, "--backend", "hostile_backends:hanging", "--backend", "numpy-float32",
                 "--backend-timeout", "5", "--json", cwd=here, timeout=300)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    hung, numpy = json.loads(r.stdout)["results"]
    assert {x["message"] for x in hung["gradients"].values()} == {"timed out after 5 s"}
    assert "in _hang" in hung["error"]  # the worker's traceback, asked for before it was killed
    assert {x["verdict"] for x in numpy["gradients"].values()} == {"pass"}
    assert elapsed < 60  # seconds, not the default 600 (generous: the machine may be loaded)


def test_the_backend_timeout_comes_from_the_environment_and_the_file_too(here):
    (here / "pyproject.toml").write_text("[tool.difftest]\nbackend_timeout = 2\n")
    r = difftest("check", STRIDED, "--backend", "hostile_backends:hanging", "--json", cwd=here, timeout=300)
    assert json.loads(r.stdout)["results"][0]["gradients"]["grad_input"]["message"] == "timed out after 2 s"
    r = difftest("check", STRIDED, "--backend", "hostile_backends:hanging", "--json", cwd=here, timeout=300,
                 env={"DIFFTEST_BACKEND_TIMEOUT": "1.5"})
    assert json.loads(r.stdout)["results"][0]["gradients"]["grad_input"]["message"] == "timed out after 1.5 s"
    r = difftest("check", STRIDED, "--backend", "numpy-float32", cwd=here, env={"DIFFTEST_BACKEND_TIMEOUT": "soon"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("difftest: error: DIFFTEST_BACKEND_TIMEOUT=soon: backend_timeout must be a number "
                                "of seconds > 0")


def test_no_isolate_runs_the_backend_in_the_judging_process(here):
    r = difftest("check", STRIDED, "--backend", "hostile_backends:exiting", "--no-isolate", cwd=here)
    assert r.returncode == 3  # its os._exit(3) ended difftest itself: what --no-isolate is for (debugging)


def test_a_campaign_over_a_backend_that_aborts_on_strided_cases_completes_with_every_crash_kept(here):
    out = here / "out"
    r = difftest("run", "--backend", "hostile_backends:aborting_strided", "--backend", "numpy-float32",
                 "--examples", "25", "--rounds", "1", "--seed", "3", "--no-database", "--out", out, "--json",
                 cwd=here, timeout=900)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "complete" and read_campaign(out)["status"] == "complete"
    name = "hostile_backends:aborting_strided"
    crashes = {f["gradient"] for f in doc["findings"] if f["backend"] == name and f["verdict"] == "error"}
    assert crashes == {"grad_input", "grad_weight", "grad_bias"}  # (when it computes, numpy's own findings too)
    records = read_results(out)
    searched = {b: {r.case_id for r in records if r.backend == b and r.phase == "search"} for b in (name, "numpy-float32")}
    assert searched[name] == searched["numpy-float32"] and len(searched[name]) > 8  # every case judged by both
    crashed = [r for r in records if r.backend == name and r.verdict == "error"]
    assert crashed and {gr.message for r in crashed for gr in r.gradients.values()} == {"crashed: SIGABRT"}
    for rec in crashed:  # each crash is kept: a strided case that replays the crash
        assert Case.load(out / rec.case_file).geometry.stride != 1
    assert all(r.verdict != "error" for r in records if r.backend == name and r.geometry["stride"] == 1)
    finding = next(f for f in doc["findings"] if f["backend"] == name and f["verdict"] == "error")
    replay = difftest("check", finding["case_file"], "--backend", name, "--backend", "numpy-float32", cwd=here)
    assert replay.returncode == 1 and rows(replay.stdout)[(name, finding["gradient"])] == ("error", "crashed: SIGABRT")
    assert (out / "report.html").is_file()


def test_a_killed_run_keeps_the_case_its_backend_was_on_and_its_report_renders(here):
    out = here / "out"
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    p = subprocess.Popen([sys.executable, "-m", "difftest", "run", "--backend", "hostile_backends:hanging",
                          "--examples", "5", "--rounds", "1", "--no-database", "--out", str(out), "--quiet"],
                         cwd=here, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "cases").glob("*.npz")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the case is written before the backend runs (and hangs)
        assert list((out / "cases").glob("*.npz")), "the run never wrote the case its backend was on"
        time.sleep(0.5)
    finally:
        p.kill()
        p.wait(60)
    (kept,) = (out / "cases").glob("*.npz")
    assert Case.load(kept).format.name == "binary32"  # whole, and replayable
    assert read_campaign(out)["status"] == "running" and (out / ".lock").is_file()
    r = difftest("report", out, cwd=here)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "This run did not finish" in page and "it was killed" in page
    # the next run on the directory takes the dead run's lock over and keeps its results aside
    r = difftest("run", "--backend", "numpy-float32", "--examples", "3", "--rounds", "1", "--no-database",
                 "--out", out, "--fail-on", "never", cwd=here, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (here / "out.previous" / "cases" / kept.name).is_file()
    assert f"the previous results in {out} are kept in {out}.previous" in r.stderr


WORKER_OF_A_RUN = """
import sys, threading
from difftest.backends import get_backend
from difftest.isolation import Workers
pool = Workers(timeout=None)
(b,) = pool.wrap([get_backend("hostile_backends:hanging")])
b.environment()  # the worker is up
print(b._worker.process.pid, flush=True)
b.conv2d_backward(*[__import__("numpy").zeros(s) for s in ((1, 1, 3, 3), (1, 1, 1, 1), (1, 1, 3, 3))], 1, 0)
"""


def test_a_worker_ends_when_the_run_that_started_it_is_killed(here):
    p = subprocess.Popen([sys.executable, "-c", WORKER_OF_A_RUN], cwd=here, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(p.stdout.readline())
        time.sleep(0.5)  # the worker is in the hanging call
        assert Path(f"/proc/{worker}").exists()
    finally:
        p.kill()
        p.wait(60)
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the worker outlived the run that started it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_fingerprint_leaves_out_a_backend_that_crashes_and_says_why(here):
    r = difftest("fingerprint", "--backend", "hostile_backends:aborting", "--backend", "emu-binary32",
                 "--geometry", "1,4,6,6,4,3,1,1", "--out", here / "fp", cwd=here, timeout=600)
    assert r.returncode == 1, r.stderr
    assert "hostile_backends:aborting not fingerprinted: crashed: SIGABRT" in r.stdout.replace("  ", " ").replace("  ", " ")
    doc = json.loads((here / "fp" / "fingerprints.json").read_text())
    assert [b["backend"] for b in doc["backends"]] == ["emu-binary32"]


TINY_MODEL = """
import torch

def net():
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))
"""


def test_model_judges_every_layer_when_a_backend_crashes_on_one(here):
    (here / "tiny_model.py").write_text(TINY_MODEL)
    r = difftest("model", "tiny_model:net", "--input-shape", "1,2,9,9", "--backend", "hostile_backends:aborting_strided",
                 "--backend", "numpy-float32", "--out", here / "m", "--json", cwd=here, timeout=600)
    assert r.returncode == 1, r.stderr
    layers = {layer["name"]: {x["backend"]: {x2["verdict"] for x2 in x["gradients"].values()} for x in layer["results"]}
              for layer in json.loads(r.stdout)["layers"]}
    assert layers["0"]["hostile_backends:aborting_strided"] == {"error"}  # stride 2: it aborted
    assert layers["2"]["hostile_backends:aborting_strided"] != {"error"}  # stride 1: it computed
    assert all("numpy-float32" in x and "error" not in x["numpy-float32"] for x in layers.values())
    assert read_campaign(here / "m")["status"] == "complete"


pytest_plugins = ["pytester"]


def test_the_pytest_plugin_reports_a_crashing_backend_as_failed_items_and_finishes(pytester):
    shutil.copy(HOSTILE, pytester.path / "hostile_backends.py")
    r = pytester.runpytest_subprocess(
        "--difftest", "--difftest-backend", "hostile_backends:aborting_strided", "--difftest-backend", "nf-binary32",
        "--difftest-examples", "12", "--difftest-rounds", "1", "--difftest-seed", "3",
        "--difftest-out", str(pytester.path / "out"), "--difftest-database", str(pytester.path / "db"),
        "-p", "no:cacheprovider")
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed") == 3 and outcomes.get("passed") == 3, r.stdout.str()
    for g in ("grad_input", "grad_weight", "grad_bias"):  # each item names the crash and its replay
        r.stdout.fnmatch_lines([f"shrunk hostile_backends:aborting_strided {g}: error, crashed: SIGABRT",
                                "    reproduce: difftest check * --backend hostile_backends:aborting_strided*"])


def test_a_python_backend_object_runs_in_its_worker_when_it_pickles(here):
    """Objects a worker cannot rebuild (defined in __main__, or not picklable) run here, with a note."""
    sys.path.insert(0, str(here))
    try:
        import hostile_backends

        with Workers(timeout=120) as pool:
            (b,) = pool.wrap([hostile_backends.Hostile("mine", hostile_backends._always, hostile_backends._exit)])
            (r,) = check_case(Case.load(STRIDED), [b])
            assert r.gradients["grad_input"].message == "crashed: exit code 3"  # it ran in a worker, not here
            local = pool.wrap([hostile_backends.Hostile("local", lambda x, w, s: False, print)])[0]
            assert not hasattr(local, "_worker") and "local runs in this process" in pool.notes[0]
    finally:
        sys.path.remove(str(here))


def test_a_worker_hears_nothing_of_the_users_script(here):
    """Starting a worker does not run the user's __main__ again (multiprocessing would, by default)."""
    script = here / "script.py"
    script.write_text(textwrap.dedent("""
        print("the script ran", flush=True)
        from difftest.case import Case
        from difftest.check import check_case
        from difftest.isolation import Workers
        with Workers(timeout=120) as pool:
            (r,) = check_case(Case.load(%r), pool.wrap(["numpy-float32"]))
        print(r.verdict)
    """ % str(STRIDED)))
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    out = subprocess.run([sys.executable, str(script)], cwd=here, env=environ, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split() == ["the", "script", "ran", "pass"], out.stderr
