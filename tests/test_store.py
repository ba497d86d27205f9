"""The result store trusts nothing it reads: a result directory that tries every escape, every malformed
file, a run that never finished, shards that found the same thing, reruns, a stale ``.jobs/``, a full disk.

A result directory comes back from CI runners as an artifact: a path that leads out of it, or a field of
the wrong type, is one line and exit 2, and nothing is written."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from difftest.case import Case
from difftest.check import check_case
from difftest.cli import main
from difftest.config import ENV_VARS
from difftest.outcome import FindingKey
from difftest.results import findings
from difftest.store import MalformedResults, Recorder, confined, read_campaign, read_results
from difftest.summary import format_summary, summary_doc

ROOT = Path(__file__).resolve().parents[1]
CANCELLATION = ROOT / "examples" / "cancellation.npz"
STRIDED = ROOT / "examples" / "stride2_pad1.npz"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "pyproject.toml").write_text("[project]\nname = 'elsewhere'\n")
    monkeypatch.chdir(work)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difftest: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A whole result directory: numpy-float32's order finding on the cancellation case (shrunk, with
    its outputs and largest case), nf-binary32 passing; campaign.json, environments.json, expected.json."""
    from difftest.expectations import Expected, Expectations

    d = tmp_path_factory.mktemp("store") / "run"
    case, small = Case.load(CANCELLATION), Case.load(STRIDED)
    rec = Recorder(d, seed=0, expectations=Expectations([Expected("torch-*", "order", "a reason")], "x.toml"))
    try:
        results = check_case(case, ["numpy-float32", "nf-binary32"])
        rec.record(small, check_case(small, ["numpy-float32"]), "search", 1)
        rec.record(case, results, "search", 1)
        big = {"case_id": case.case_id, "case_file": f"cases/{case.case_id}.npz", "geometry": case.geometry.as_dict(),
               "macs": case.geometry.macs}
        rec.record(case, [results[0]], "shrunk", 1, findings=[FindingKey("numpy-float32", "grad_bias", "order")],
                   largest_case=big)
        rec.campaign({"profile": "quick", "seed": 0, "shard": "1/1", "status": "complete", "duration_s": 1.5,
                      "cases": 2, "findings": 1, "backends": ["numpy-float32", "nf-binary32"]})
    finally:
        rec.close()
    return d


@pytest.fixture
def run_dir(pristine, tmp_path) -> Path:
    d = tmp_path / "artifacts" / "run"
    shutil.copytree(pristine, d)
    return d


def lines(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]


def write_lines(d: Path, docs: list[dict]) -> None:
    (d / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))


def finding_line(d: Path) -> int:
    """The 0-based index of the finding's line."""
    return next(k for k, x in enumerate(lines(d)) if x.get("finding"))


def test_the_pristine_directory_reads_merges_and_renders(run_dir, tmp_path, capsys):
    assert len(findings(read_results(run_dir))) == 1
    assert main(["merge", str(run_dir), "--out", str(tmp_path / "m"), "--fail-on", "never"]) == 0
    assert main(["report", str(run_dir)]) == 0


# --- every escape ------------------------------------------------------------------------------------

ESCAPES = {
    "a .pth into site-packages": ("case_file", "../../venv/lib/python3.11/site-packages/x.pth"),
    "an absolute path": ("case_file", "/etc/passwd"),
    "dot-dot inside": ("case_file", "cases/../../../x.npz"),
    "an empty part": ("case_file", "cases//x.npz"),
    "a backslash": ("case_file", "cases\\..\\..\\x.npz"),
    "outputs": ("outputs_file", "../x.npz"),
    "the largest case": ("largest_case", "../x.npz"),
}


@pytest.mark.parametrize("what", ESCAPES)
def test_merge_and_report_refuse_a_path_that_leads_out_and_write_nothing(run_dir, tmp_path, what, capsys):
    key, rel = ESCAPES[what]
    venv = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    venv.mkdir(parents=True)
    bait = run_dir / rel if not rel.startswith("/") and "\\" not in rel else None
    docs = lines(run_dir)
    k = finding_line(run_dir)
    if key == "largest_case":
        docs[k]["largest_case"]["case_file"] = rel
    else:
        docs[k][key] = rel
    write_lines(run_dir, docs)
    before = sorted(p for p in tmp_path.rglob("*") if "artifacts" not in p.parts)
    out = tmp_path / "reports" / "nightly"
    assert main(["merge", str(run_dir), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{run_dir / 'results.jsonl'}:{k + 1}: " in line and "result directory" in line
    assert main(["report", str(run_dir)]) == 2
    assert f"results.jsonl:{k + 1}: " in one_error_line(capsys.readouterr().err)
    assert sorted(p for p in tmp_path.rglob("*") if "artifacts" not in p.parts) == before  # nothing written
    assert not list(venv.iterdir()) and (bait is None or not bait.exists() or bait.is_relative_to(run_dir))


@pytest.mark.parametrize("how", ["the cases folder", "a case file", "results.jsonl"])
def test_a_symbolic_link_leading_out_is_refused(run_dir, tmp_path, how, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    k = finding_line(run_dir)
    rel = lines(run_dir)[k]["case_file"]
    if how == "the cases folder":
        shutil.copytree(run_dir / "cases", outside / "cases")
        shutil.rmtree(run_dir / "cases")
        (run_dir / "cases").symlink_to(outside / "cases")
    elif how == "a case file":
        (outside / "secret.npz").write_bytes(b"secret")
        (run_dir / rel).unlink()
        (run_dir / rel).symlink_to(outside / "secret.npz")
    else:
        shutil.move(run_dir / "results.jsonl", outside / "results.jsonl")
        (run_dir / "results.jsonl").symlink_to(outside / "results.jsonl")
    out = tmp_path / "m"
    assert main(["merge", str(run_dir), "--out", str(out)]) == 2
    assert "leads outside the result directory" in one_error_line(capsys.readouterr().err)
    assert not out.exists()
    assert main(["report", str(run_dir)]) == 2
    capsys.readouterr()


def test_confined_accepts_what_difftest_writes_and_nothing_else(tmp_path):
    assert confined(tmp_path, "cases/abc.npz", "x") == tmp_path / "cases" / "abc.npz"
    for bad in ("", ".", "a/./b", "..", "a/..", "/a", "a\\b", "a\x00b", 7, None):
        with pytest.raises(MalformedResults):
            confined(tmp_path, bad, "x")


# --- every malformed file ------------------------------------------------------------------------------

def _line(k_of, change):
    def mutate(d: Path) -> str:
        docs = lines(d)
        k = k_of(d)
        change(docs[k])
        write_lines(d, docs)
        return f"results.jsonl:{k + 1}: "
    return mutate


def _set(path, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _file(name, text):
    def mutate(d: Path) -> str:
        (d / name).write_text(text)
        return f"{name}: "
    return mutate


MALFORMED = {
    "worst is a list": _line(finding_line, _set(("gradients", "grad_bias", "worst"), [1, 2])),
    "a numeric backend": _line(finding_line, _set(("backend",), 7)),
    "an unknown verdict": _line(finding_line, _set(("gradients", "grad_bias", "verdict"), "bogus")),
    "a ratio that is text": _line(finding_line, _set(("gradients", "grad_bias", "max_ratio"), "large")),
    "negative violations": _line(finding_line, _set(("gradients", "grad_bias", "violations"), -1)),
    "a newer schema": _line(finding_line, _set(("schema",), 99)),
    "a finding the line does not show": _line(finding_line, _set(("finding",), {"backend": "numpy-float32",
                                                                            "gradient": "grad_input", "verdict": "order"})),
    "an unknown phase": _line(finding_line, _set(("phase",), "weird")),
    "a bad shard": _line(finding_line, _set(("shard",), "all")),
    "a case id that is a path": _line(finding_line, _set(("case_id",), "../../x")),
    "a geometry that is none": _line(finding_line, _set(("geometry",), {"N": 1, "C": 0, "H": 1, "W": 1, "O": 1,
                                                                       "kH": 3, "kW": 3})),
    "an unknown gradient": _line(finding_line, _set(("requested",), ["grad_foo"])),
    "timings that are text": _line(finding_line, _set(("timings",), {"backend_s": "fast"})),
    "a line that is a list": lambda d: (write_lines(d, [[1, 2]] + lines(d)), "results.jsonl:1: ")[1],
    "garbage before the last line": lambda d: ((d / "results.jsonl").write_text(
        "{not json\n" + (d / "results.jsonl").read_text()), "results.jsonl:1: ")[1],
    "environments.json not JSON": _file("environments.json", "{"),
    "environments.json a list": _file("environments.json", "[1]"),
    "campaign.json a list": _file("campaign.json", "[]"),
    "campaign.json status a number": _file("campaign.json", '{"status": 3}'),
    "campaign.json duration text": _file("campaign.json", '{"status": "complete", "duration_s": "soon"}'),
    "campaign.json merged_from not a list": _file("campaign.json", '{"merged_from": {"a": 1}}'),
    "expected.json with a bad verdict": _file("expected.json", '{"expected": [{"backend": "x", "verdict": "bogus", '
                                                               '"reason": "r"}]}'),
    "expected.json a number": _file("expected.json", "3"),
    "model.json layers not a list": _file("model.json", '{"model": "m", "input_shape": [1, 3, 8, 8], "seed": 0, '
                                                         '"convolutions": 1, "layers": 5}'),
    "fingerprints.json evidence leading out": _file("fingerprints.json", json.dumps({"backends": [
        {"backend": "b", "format": "binary32", "geometry": {}, "gradients": {"grad_bias": {"evidence": {
            "order": "../../etc/passwd"}}}}]})),
    "fingerprints.json bits that are text": _file("fingerprints.json", json.dumps({"backends": [
        {"backend": "b", "gradients": {"grad_bias": {"product_bits": "many"}}}]})),
}


@pytest.mark.parametrize("what", MALFORMED)
def test_every_malformed_file_is_one_line_and_exit_2(run_dir, tmp_path, what, capsys):
    where = MALFORMED[what](run_dir)
    for argv in (["report", str(run_dir)], ["merge", str(run_dir), "--out", str(tmp_path / "m")]):
        assert main(argv) == 2, argv
        line = one_error_line(capsys.readouterr().err)
        assert where in line and str(run_dir) in line, (argv, line)
    assert not (tmp_path / "m").exists() and not (run_dir / "report.html").exists()


def test_a_results_file_that_is_a_folder_is_refused(run_dir, capsys):
    (run_dir / "results.jsonl").unlink()
    (run_dir / "results.jsonl").mkdir()
    assert main(["report", str(run_dir)]) == 2
    assert "not a regular file" in one_error_line(capsys.readouterr().err)


def test_a_torn_last_line_is_what_a_kill_leaves_and_is_skipped(run_dir):
    n = len(read_results(run_dir))
    with open(run_dir / "results.jsonl", "a") as f:
        f.write('{"schema": 2, "case_id": "ab')
    assert len(read_results(run_dir)) == n


def test_a_heatmap_file_that_claims_a_huge_array_is_a_note_not_an_allocation(run_dir, capsys):
    import numpy as np

    rel = lines(run_dir)[finding_line(run_dir)]["outputs_file"]
    with open(run_dir / rel, "wb") as f:
        np.savez(f, grad_bias=np.zeros(3), **{f"grad_bias__{n}": np.zeros((1000, 1000)) for n in
                                              ("error", "bound", "bound_order_free")})
    assert main(["report", str(run_dir)]) == 0
    assert "not the gradient" in (run_dir / "report.html").read_text()


# --- runs that did not finish ----------------------------------------------------------------------------

@pytest.mark.parametrize("status, says", [("running", "it was killed"), ("interrupted", "it was interrupted"),
                                          ("crashed", "it stopped on an error")])
def test_report_renders_a_run_that_did_not_finish_with_its_status_in_the_headline(run_dir, status, says, capsys):
    (run_dir / "campaign.json").write_text(json.dumps({"profile": "quick", "status": status, "cases": 2}))
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    head = page[page.index("<h1>"):page.index('id="overview"')]
    assert "This run did not finish" in head and f"status <b>{status}</b>" in head and says in head
    assert "Findings (1)" in page  # what it found is shown


def test_merge_takes_a_run_that_did_not_finish(run_dir, tmp_path, capsys):
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed)
    (killed / "campaign.json").write_text('{"status": "running"}')
    out = tmp_path / "m"
    assert main(["merge", str(run_dir), str(killed), "--out", str(out), "--fail-on", "never"]) == 0
    info = read_campaign(out)
    assert info["status"] == "incomplete" and [c["status"] for c in info["merged_from"]] == ["complete", "running"]
    assert "This run did not finish" in (out / "report.html").read_text()


# --- merge: one finding once, exit codes ----------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """Two shards of one campaign that found the same findings (emu-tf32's precision, numpy's order)."""
    base = tmp_path_factory.mktemp("shards")
    for k in (1, 2):
        assert main(["run", "--backend", "emu-tf32", "--backend", "numpy-float32", "--examples", "30", "--rounds", "1",
                     "--seed", "5", "--shard", f"{k}/2", "--no-database", "--no-shrink", "--out", str(base / f"s{k}"),
                     "--quiet", "--no-report", "--fail-on", "never"]) == 0
    return base / "s1", base / "s2"


def _keys(d: Path) -> set:
    return {r.finding for r in read_results(d) if r.finding is not None}


def test_merged_shards_count_each_finding_once_on_every_face(shards, tmp_path, capsys):
    a, b = shards
    shared = _keys(a) & _keys(b)
    assert shared, "the shards found nothing in common: the test needs a seed that does"
    out = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--out", str(out), "--fail-on", "never"]) == 0
    text = capsys.readouterr().out
    records = read_results(out)
    union = _keys(a) | _keys(b)
    assert len(findings(records)) == len(union) == read_campaign(out)["findings"]
    assert len(summary_doc(records)["findings"]) == len(union)
    assert f"{len(union)} finding" in format_summary(records) and f", {len(union)} finding" in text
    assert f"Findings ({len(union)})" in (out / "report.html").read_text()
    first = {}
    for d in shards:
        for key, s in read_campaign(d)["first_seen_s"].items():
            first[key] = min(s, first.get(key, s))
    assert read_campaign(out)["first_seen_s"] == dict(sorted(first.items()))  # the earliest of the shards


def test_the_merged_finding_is_the_smallest_reproducer(shards, tmp_path):
    from difftest.geometry import Geometry

    out = tmp_path / "m"
    assert main(["merge", *map(str, shards), "--out", str(out), "--fail-on", "never", "--no-report"]) == 0
    size = lambda r: Geometry.from_dict(r.geometry).macs  # noqa: E731
    for r in findings(read_results(out)):
        copies = [c for d in shards for c in read_results(d) if c.finding == r.finding]
        assert size(r) == min(size(c) for c in copies)
        assert (out / r.case_file).is_file()


def test_a_baseline_of_the_same_findings_calls_none_new(shards, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["merge", *map(str, shards), "--out", str(out), "--fail-on", "never", "--no-report"]) == 0
    shutil.copytree(out, tmp_path / "yesterday")
    assert main(["report", str(out), "--baseline", str(tmp_path / "yesterday")]) == 0
    page = (out / "report.html").read_text()
    assert "<b>0</b> new since the baseline" in page


def test_merge_exits_like_run_under_fail_on_and_expected(shards, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["merge", *map(str, shards), "--out", str(out), "--no-report"]) == 1  # default: order
    assert main(["merge", *map(str, shards), "--out", str(out), "--no-report", "--overwrite",
                 "--fail-on", "never"]) == 0
    declared = tmp_path / "expected.toml"
    declared.write_text("".join(f'[[expected]]\nbackend = "{k.backend}"\ngradient = "{k.gradient}"\n'
                                f'verdict = "{k.verdict}"\nreason = "seen"\n' for k in _keys(out)))
    assert main(["merge", *map(str, shards), "--out", str(out), "--no-report", "--overwrite",
                 "--expected", str(declared)]) == 0


# --- reruns, stale jobs --------------------------------------------------------------------------------

SMALL = ["--backend", "numpy-float32", "--examples", "4", "--rounds", "1", "--no-database", "--quiet",
         "--no-report", "--fail-on", "never"]


def test_a_rerun_keeps_the_previous_results_aside_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--seed", "1", "--out", str(out)]) == 0
    first = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert main(["run", *[a for a in SMALL if a != "--quiet"], "--seed", "2", "--out", str(out)]) == 0
    assert f"the previous results in {out} are kept in {out}.previous" in capsys.readouterr().err
    assert (tmp_path / "out.previous" / "results.jsonl").read_text() == first
    assert read_campaign(out)["previous"] == f"{out}.previous"
    second = (out / "results.jsonl").read_text()
    assert main(["run", *SMALL, "--seed", "3", "--out", str(out), "--overwrite"]) == 0
    assert (tmp_path / "out.previous" / "results.jsonl").read_text() == first  # --overwrite kept nothing new
    assert (out / "results.jsonl").read_text() != second


def test_a_previous_folder_that_is_not_results_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *SMALL, "--out", str(out)]) == 0
    (tmp_path / "out.previous").mkdir()
    (tmp_path / "out.previous" / "notes.txt").write_text("mine")
    before = (out / "results.jsonl").read_text()
    assert main(["run", *SMALL, "--out", str(out)]) == 2
    assert "out.previous exists and is not a difftest result directory" in one_error_line(capsys.readouterr().err)
    assert (out / "results.jsonl").read_text() == before and not (out / ".lock").exists()


def test_a_stale_jobs_folder_is_salvaged_into_the_run_that_left_it_and_removed(run_dir, pristine, tmp_path, capsys):
    job = run_dir / ".jobs" / "job-1"
    shutil.copytree(pristine, job)
    extra = lines(job)[0] | {"case_id": "f" * 16, "phase": "search"}
    extra.pop("finding", None)
    write_lines(job, [extra])
    (run_dir / "campaign.json").write_text('{"status": "running"}')
    n = len(lines(run_dir))
    assert main(["run", *SMALL, "--out", str(run_dir)]) == 0
    previous = tmp_path / "artifacts" / "run.previous"
    assert len(lines(previous)) == n + 1 and lines(previous)[-1]["case_id"] == "f" * 16
    assert not (run_dir / ".jobs").exists() and not (previous / ".jobs").exists()


# --- a full disk -----------------------------------------------------------------------------------------

RUN = [sys.executable, "-m", "difftest", "run", "--backend", "numpy-float32", "--backend", "nf-binary32",
       "--examples", "200", "--rounds", "1", "--no-database", "--quiet", "--fail-on", "never"]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing


def test_a_write_that_fails_names_its_path_and_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([*RUN, "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                       preexec_fn=_limit_file_size, timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_error_line(r.stderr)
    assert f"difftest: error: {out}/" in line and "File too large" in line
    assert not (out / ".lock").exists()


def test_a_full_disk_names_its_path_and_releases_the_lock(tmp_path):
    """A real ENOSPC: a 256 KiB tmpfs in a mount namespace of the test's own (where the kernel allows one)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here: cannot mount a small file system to fill")
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces are not allowed here ({probe.stderr.decode().strip()})")
    script = (f"mount -t tmpfs -o size=256k none {disk} && cd {tmp_path} && "
              + " ".join(map(str, [*RUN, "--out", disk / "out"])) + f"; echo rc=$?; ls -A {disk / 'out'}")
    r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert "rc=2" in r.stdout, r.stdout + r.stderr
    line = one_error_line(r.stderr)
    assert f"difftest: error: {disk / 'out'}/" in line and "No space left on device" in line
    assert ".lock" not in r.stdout.split("rc=2", 1)[1].split()
