"""Judging on a Dask cluster (``--scheduler``, difftest.distributed), against a real
``distributed.LocalCluster``: the backends run here, the judging there, the result directory is
written here and holds what a run without the cluster writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from difftest import distributed as dd  # noqa: E402
from difftest.case import Case  # noqa: E402
from difftest.check import BackendRun, check_case, run_backend  # noqa: E402
from difftest.cli import main  # noqa: E402
from difftest.errors import DifftestError  # noqa: E402
from difftest.formats import BINARY32  # noqa: E402
from difftest.store import read_campaign, read_results  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    """A local cluster of two single-threaded worker processes; its scheduler's address."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _case(seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    r = lambda *s: BINARY32.round_array(rng.standard_normal(s))  # noqa: E731
    return Case(r(2, 3, 7, 6), r(4, 3, 3, 3), r(2, 4, 5, 4), stride=1, padding=0, format=BINARY32)


def _numbers(results) -> list:
    return [(r.backend, g, gr.verdict, gr.max_ratio, gr.max_ratio_order_free, gr.violations, gr.worst_index)
            for r in results for g, gr in r.gradients.items()]


def test_a_case_judged_on_the_cluster_is_judged_as_here_and_keeps_its_outputs(scheduler):
    case = _case()
    backends = ["numpy-float32", "nf-binary16", "emu-tf32"]
    here = check_case(case, backends)
    with dd.connect(scheduler) as cluster:
        there = check_case(case, backends, cluster=cluster)
        sampled = check_case(case, backends, cluster=cluster, sample=20, seed=1)
    assert _numbers(there) == _numbers(here)
    assert [r.verdict for r in there] == ["pass", "domain", "precision"]  # binary16 cannot hold the values: not run
    assert [r.outputs is None for r in there] == [False, True, False]
    assert all(np.array_equal(a.outputs[g], b.outputs[g]) for a, b in zip(here, there) if a.outputs for g in case.gradients)
    assert _numbers(sampled) == _numbers(check_case(case, backends, sample=20, seed=1))
    assert sampled[0].gradients["grad_input"].sampled["judged"] == 20


def test_a_judgement_that_fails_on_the_cluster_is_a_clear_error(scheduler):
    case = _case()
    run = run_backend(__import__("backends").get_backend("numpy-float32"), case)
    broken = BackendRun(run.backend, run.format, run.environment, {g: np.zeros((1,)) for g in case.gradients}, 0.0)
    with dd.connect(scheduler) as cluster, pytest.raises(DifftestError, match="failed to judge a case"):
        cluster.judge(case, [broken])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
def test_model_on_the_cluster_writes_the_same_results_here(scheduler, tmp_path, capsys):
    pytest.importorskip("torch")
    from tests.test_model import TINY, TINY_SHAPE

    args = ["model", TINY, "--input-shape", TINY_SHAPE, "--backend", "nf-binary32", "--backend", "torch-cpu-float32",
            "--json", "--no-report"]
    assert main([*args, "--out", str(tmp_path / "here")]) == 0
    here = json.loads(capsys.readouterr().out)
    assert main([*args, "--out", str(tmp_path / "there"), "--scheduler", scheduler]) == 0
    there = json.loads(capsys.readouterr().out)
    strip = lambda doc: [(x["name"], x["results"]) for x in doc["layers"]]  # noqa: E731
    assert strip(there) == strip(here) and len(there["layers"]) == 4
    assert read_campaign(tmp_path / "there")["scheduler"] == scheduler
    assert len(read_results(tmp_path / "there")) == len(read_results(tmp_path / "here"))


def test_a_campaign_on_the_cluster_searches_the_same_cases(scheduler, tmp_path, capsys):
    args = ["run", "--backend", "numpy-float32", "--backend", "nf-binary32", "--rounds", "1", "--examples", "6",
            "--no-database", "--quiet", "--no-report", "--jobs", "1", "--fail-on", "never"]
    assert main([*args, "--out", str(tmp_path / "here")]) == 0
    assert main([*args, "--out", str(tmp_path / "there"), "--scheduler", scheduler]) == 0
    key = lambda recs: sorted((r.case_id, r.backend, r.verdict) for r in recs)  # noqa: E731
    assert key(read_results(tmp_path / "there")) == key(read_results(tmp_path / "here"))
    assert read_campaign(tmp_path / "there")["scheduler"] == scheduler


def test_an_unreachable_scheduler_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dd, "CONNECT_TIMEOUT", 1)
    code = main(["model", "tests.test_model:tiny", "--input-shape", "1,2,8,8", "--backend", "nf-binary32",
                 "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
