"""--jobs: format groups in parallel processes, one result directory, the same cases as one process."""

import json

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.backends import FunctionBackend
from difftest.formats import get_format
from difftest.jobs import plan
from difftest.search import Group
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
    # cases per backend, counted from the lines: each backend of a group searched its group's cases
    per = info["cases_per_backend"]
    assert set(per) == set(NAMES) and per == read_campaign(tmp_path / "one")["cases_per_backend"]
    assert per["nf-binary32"] == per["numpy-float32"] == len({r.case_id for r in two if r.phase == "search"
                                                              and r.backend == "numpy-float32"}) > 0
    assert [g["label"] for g in info["groups"]] == ["binary32", "binary16", "bfloat16"]
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


def test_the_plan_balances_the_groups_cost_per_case_over_jobs():
    costs = {"binary64": 0.05, "binary32": 0.03, "binary16": 0.02, "bfloat16": 0.02, "tf32": 0.01}
    groups = [Group(get_format(f), (), cost=c) for f, c in costs.items()]
    labels = lambda layout: [[g.label for g in job] for job in layout]  # noqa: E731
    two = plan(groups, 2)  # costliest first, each to the cheaper job: 0.07 and 0.06 per case of each job
    assert labels(two) == [["binary64", "bfloat16"], ["binary32", "binary16", "tf32"]]
    assert labels(plan(groups, 9)) == [["binary64"], ["binary32"], ["binary16"], ["bfloat16"], ["tf32"]]


def test_a_campaign_groups_backends_by_format_and_by_what_they_take():
    spec_only = FunctionBackend(lambda x, w, d, stride, padding: None, "binary32", name="mine")
    names = ["numpy-float32", "nf-binary32", "nf-binary16"]
    campaign = Campaign(CampaignConfig([get_backend(n) for n in names] + [spec_only], progress=False))
    groups = campaign.groups(campaign.config.backends)
    assert [(g.label, g.names) for g in groups] == [
        ("binary32", ["numpy-float32", "nf-binary32"]), ("binary16", ["nf-binary16"]),
        ("binary32 (no dilation, no groups, equal axes)", ["mine"])]
    assert all(0 < g.realistic < campaign.profile.realistic and g.cost > 0 for g in groups)
