"""The hypothesis example database: a campaign saves its failures, and the next run replays them first."""

from pathlib import Path

from difftest.backends import get_backend
from difftest.campaign import Campaign, CampaignConfig
from difftest.results import findings


def _findings(out: Path, seed: int, database, examples: int):
    cfg = CampaignConfig(backends=[get_backend("numpy-float32")], out=out, database=database, progress=False,
                         seed=seed, examples=examples, rounds=1)
    return {(r.finding.gradient, r.finding.verdict) for r in findings(Campaign(cfg).run())}


def test_a_campaign_writes_its_failures_and_the_next_run_replays_them_first(tmp_path):
    db = tmp_path / "db"
    first = _findings(tmp_path / "a", seed=1, database=db, examples=150)  # a seed whose draws find something
    assert first and db.is_dir() and any(db.iterdir())
    # a fresh seed with three examples: without the database it finds nothing, with it the same finding
    assert _findings(tmp_path / "b", seed=12345, database=None, examples=3) == set()
    assert _findings(tmp_path / "c", seed=12345, database=db, examples=3) == first
