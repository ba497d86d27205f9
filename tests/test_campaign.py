"""Campaigns find discrepancies, shrink them to replayable reproducers, and never lose a finding.

Every campaign here is bounded by work (``examples``, ``rounds``) and a seed, never by time: what
it checks does not depend on the machine's speed or load."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig, Profile, Progress, shard_of
from difftest.case import Case
from difftest.check import check_case
from difftest.cli import main
from difftest.geometry import GRADIENTS
from difftest.outcome import SCHEMA_VERSION, ResultRecord
from difftest.results import findings
from difftest.store import read_campaign, read_results
from difftest.strategies import Limits

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'difftest[torch]')")


def run_campaign(tmp_path, names, **kw):
    cfg = CampaignConfig(backends=[get_backend(n) for n in names], out=tmp_path / "out", database=None,
                         progress=False, **kw)
    return cfg.out, Campaign(cfg).run()


#: Small cases with long folds (up to 16 × 16 images, 2 channels): a vectorised or blocked sum differs from
#: the sequential fold on most structured-cancellation cases, so an order finding comes within a few examples.
LONG_FOLDS = Profile("long-folds", Limits(max_batch=1, max_channels=2, max_size=16, max_kernel=3), 30, 60.0, 10.0)


def test_a_seeded_campaign_finds_order_discrepancies_in_torch_and_its_reproducers_replay(tmp_path):
    # every seed tried (0-7) finds torch's bias gradient `order` within its first 10 examples; 2 rounds of 30 for margin
    out, records = run_campaign(tmp_path, ["torch-cpu-float32"], profile=LONG_FOLDS, seed=0, examples=30, rounds=2)
    found = [r for r in findings(records) if r.finding.verdict == "order"]
    assert found, "no order finding"
    for r in found:
        f = r.finding
        case = Case.load(out / r.case_file)
        (replay,) = check_case(case, [get_backend(f.backend)])
        assert replay.gradients[f.gradient].verdict == f.verdict
    # every non-pass line has its reproducer on disk
    for r in records:
        if any(gr.verdict != "pass" for gr in r.gradients.values()):
            assert (out / r.case_file).is_file()


def test_nf_backends_never_give_a_non_pass_verdict(tmp_path):
    _, records = run_campaign(tmp_path, ["nf-binary16", "nf-bfloat16", "nf-tf32", "nf-binary32"], seed=3, examples=15, rounds=1)
    assert len(records) > 40
    assert {gr.verdict for r in records for gr in r.gradients.values()} == {"pass"}


def test_shards_are_deterministic_disjoint_and_merge_into_one_set(tmp_path, capsys):
    def shard(k, out):  # two format groups, one job each, whatever the number of cores
        assert main(["run", "--backend", "nf-binary32", "--backend", "nf-binary16", "--shard", f"{k}/2",
                     "--examples", "20", "--rounds", "2", "--seed", "9", "--jobs", "2", "--out", str(out),
                     "--no-database", "--quiet", "--fail-on", "never", "--no-report"]) == 0
        return [r for r in read_results(out) if r.phase == "search"]

    a1, a2, b = shard(1, tmp_path / "a1"), shard(1, tmp_path / "a2"), shard(2, tmp_path / "b")
    ids = lambda rs: [r.case_id for r in rs]  # noqa: E731
    by_format = lambda rs: {f: [r.case_id for r in rs if r.format == f] for f in ("binary32", "binary16")}  # noqa: E731
    assert by_format(a1) == by_format(a2)  # the jobs' lines interleave as they arrive; each group's are in order
    assert all(by_format(a1).values())
    assert not set(ids(a1)) & set(ids(b))
    assert all(shard_of(i, 2) == 1 for i in ids(a1)) and all(shard_of(i, 2) == 2 for i in ids(b))
    assert main(["merge", str(tmp_path / "a1"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    merged = read_results(tmp_path / "m")
    assert {(r.case_id, r.backend) for r in merged} == {(r.case_id, r.backend) for r in a1 + b} | {
        (r.case_id, r.backend) for r in read_results(tmp_path / "a1") + read_results(tmp_path / "b")}
    assert len(read_campaign(tmp_path / "m")["merged_from"]) == 2


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_killing_a_campaign_midway_leaves_a_valid_results_file(tmp_path, sig):
    # a campaign far longer than the test (bounded by work, not time), signalled after 20 result lines
    out = tmp_path / "out"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "difftest", "run", "--backend", "numpy-float32", "--backend", "nf-binary32",
             "--examples", "100000", "--rounds", "1", "--out", str(out), "--no-database"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path,
        )
        try:
            while _lines(out / "results.jsonl") < 20:
                assert proc.poll() is None, f"the campaign ended before it was signalled: {proc.returncode}"
                time.sleep(0.2)
            proc.send_signal(sig)
            stdout, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    records = read_results(out)  # parses; a torn last line is skipped
    assert len(records) >= 20
    assert all(r.case_id and r.backend and r.format and r.geometry and r.environment_id for r in records)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert read_campaign(out)["status"] == "interrupted"
        assert "interrupted" in stdout and "numpy-float32" in stdout  # the summary of what was done


def test_results_lines_carry_the_documented_fields(tmp_path):
    out, records = run_campaign(tmp_path, ["numpy-float16", "nf-binary16"], seed=1, examples=15, rounds=1)
    r = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert {"schema", "case_id", "backend", "format", "gradients", "geometry", "seed", "shard", "timings",
            "environment_id", "phase"} <= set(r)
    assert r["schema"] == SCHEMA_VERSION
    assert {"backend_s", "model_s", "exact_s", "nf_and_torchlean_s", "order_free_s"} <= set(r["timings"])
    envs = json.loads((out / "environments.json").read_text())
    assert r["environment_id"] in envs and envs[r["environment_id"]]["backend"] == r["backend"]
    assert ResultRecord.from_dict(r).to_dict() == r  # typed records round-trip their lines
    info = read_campaign(out)
    assert info["status"] == "complete" and info["profile"] == "quick" and info["backends"] == ["numpy-float16", "nf-binary16"]


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_in_logs(capsys):
    import io

    log = io.StringIO()
    p = Progress(stream=log)
    p.cases, p.findings = 12, 1
    p.update("x", force=True)
    assert log.getvalue().startswith("difftest: 12 cases, 1 findings") and log.getvalue().endswith("\n")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    Progress(stream=tty).update(force=True)
    assert tty.getvalue().startswith("\r")


def test_the_run_command_rejects_bad_options(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out"), "--no-database", "--quiet"]
    assert main(["run", "--shard", "3/2", *out]) == 2
    assert main(["run", "--shard", "x", *out]) == 2
    for bad in (["--examples", "0"], ["--rounds", "0"], ["--jobs", "0"], ["--time-budget", "-1"],
                ["--backend-timeout", "nan"]):
        with pytest.raises(SystemExit) as usage:  # argparse's own check: one line, exit 2
            main(["run", *bad, *out])
        assert usage.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"difftest: error: argument {bad[0]}: takes ")
    assert not (tmp_path / "out").exists()  # refused before anything ran
    capsys.readouterr()
    cuda = ["run", "--backend", "torch-cuda-float32", *out]
    ok, reason = get_backend("torch-cuda-float32").availability()
    if ok:
        assert main([*cuda, "--examples", "1", "--rounds", "1"]) in (0, 1)  # 1: a finding
        assert read_campaign(tmp_path / "out")["status"] == "complete"
    else:
        assert main(cuda) == 2  # unavailable here: a usage error saying why
        assert f"torch-cuda-float32 is not available here: {reason}" in capsys.readouterr().err


def test_a_round_goes_on_after_a_finding_and_every_distinct_key_is_one_finding(tmp_path):
    out, records = run_campaign(tmp_path, ["numpy-float32", "torch-cpu-float32", "onnxruntime-cpu-float32"],
                                seed=0, examples=30, rounds=1)
    info = read_campaign(out)
    assert info["draws"] == 30  # one round of 30 examples draws 30 cases, findings or not
    keys = {(r.backend, g, gr.verdict) for r in records for g, gr in r.gradients.items() if gr.verdict != "pass"}
    found = findings(records)
    assert sorted(tuple(r.finding) for r in found) == sorted(keys)  # each key exactly once
    for r in found:
        (replay,) = check_case(Case.load(out / r.case_file), [get_backend(r.finding.backend)])
        assert replay.gradients[r.finding.gradient].verdict == r.finding.verdict


def test_the_same_seed_bounded_by_work_gives_the_same_reproducers(tmp_path):
    # seed 1 finds two findings in its 50 draws (seeds 4-6 none since real layers take a share of the time, not of the draws)
    def reproducers(name):
        _, records = run_campaign(tmp_path / name, ["numpy-float32", "nf-binary32"], seed=1, examples=25, rounds=2)
        return sorted((tuple(r.finding), r.case_id) for r in findings(records))

    first = reproducers("a")
    assert first and first == reproducers("b")
