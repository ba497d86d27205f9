"""--jobs: format groups in parallel processes, one result directory, the same cases as one process."""

import json

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.jobs import plan
from difftest.store import read_campaign, read_results

NAMES = ["nf-binary32", "numpy-float32", "nf-binary16", "nf-bfloat16"]


def run(out, jobs, backends=None):
    cfg = CampaignConfig(backends=backends or [get_backend(n) for n in NAMES], out=out, database=None,
                         progress=False, seed=11, examples=12, rounds=1, jobs=jobs)
    return Campaign(cfg).run()


def test_two_jobs_search_the_same_cases_as_one_process_into_one_directory(tmp_path):
    one, two = run(tmp_path / "one", 1), run(tmp_path / "two", 2)
    key = lambda records: sorted((r.case_id, r.backend, r.phase) for r in records)  # noqa: E731
    assert key(one) == key(two) and len(two) > 20
    info = read_campaign(tmp_path / "two")
    assert info["status"] == "complete" and [j["status"] for j in info["job_runs"]] == ["complete", "complete"]
    assert info["cases"] == read_campaign(tmp_path / "one")["cases"]
    assert not (tmp_path / "two" / ".jobs").exists()
    envs = json.loads((tmp_path / "two" / "environments.json").read_text())
    assert {r.environment_id for r in two} <= set(envs)
    for r in two:
        if r.case_file:
            assert (tmp_path / "two" / r.case_file).is_file()


def test_a_function_backend_keeps_the_campaign_in_one_process(tmp_path):
    def mine(x, w, d, stride, padding):
        return get_backend("nf-binary16").conv2d_backward(x, w, d, stride, padding)

    from difftest.backends import FunctionBackend

    records = run(tmp_path, 2, [get_backend("nf-binary32"), FunctionBackend(mine, "binary16")])
    assert records and read_campaign(tmp_path)["job_runs"] is None
    assert {r.backend for r in read_results(tmp_path)} == {"nf-binary32", "test_a_function_backend_keeps_the_campaign_in_one_process.<locals>.mine"}


def test_the_plan_balances_backends_over_jobs():
    groups = {"binary32": [1, 2, 3, 4], "binary16": [1, 2], "bfloat16": [1, 2], "binary64": [1]}
    assert plan(groups, 2) == [["binary32", "binary64"], ["binary16", "bfloat16"]]
    assert plan(groups, 9) == [["binary32"], ["binary16"], ["bfloat16"], ["binary64"]]
