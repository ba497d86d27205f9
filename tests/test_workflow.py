"""The nightly workflow parses, is scheduled, and its jobs call real commands of this project."""

import re
import shlex
from pathlib import Path

import yaml

from difftest.cli import build_parser

WORKFLOW = Path(__file__).parents[1] / ".github" / "workflows" / "nightly.yml"


def load():
    return yaml.safe_load(WORKFLOW.read_text())


def test_the_workflow_is_scheduled_with_cpu_gpu_and_merge_jobs():
    wf = load()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert triggers["schedule"][0]["cron"]
    assert {"cpu", "gpu", "merge"} <= set(wf["jobs"])
    assert "self-hosted" in wf["jobs"]["gpu"]["runs-on"] and "gpu" in wf["jobs"]["gpu"]["runs-on"]


def test_campaign_jobs_cache_the_database_and_upload_artifacts():
    for name in ("cpu", "gpu"):
        steps = load()["jobs"][name]["steps"]
        uses = [s.get("uses", "") for s in steps]
        assert any(u.startswith("actions/cache") for u in uses)
        assert any(u.startswith("actions/upload-artifact") for u in uses)
        cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
        assert cache["with"]["path"] == ".difftest/hypothesis"


def test_every_difftest_command_in_the_workflow_parses_with_the_real_cli():
    parser = build_parser()
    commands = [
        s["run"] for job in load()["jobs"].values() for s in job["steps"] if "run" in s and "difftest " in s["run"]
    ]
    assert len(commands) >= 5
    for cmd in commands:
        cmd = re.sub(r"\$\{\{[^}]*\}\}", "1", cmd)  # expressions -> a plain value
        argv = shlex.split(cmd)
        assert argv[0] == "difftest"
        argv = [a if "*" not in a else "x" for a in argv[1:]]  # a shell glob -> one directory
        parser.parse_args(argv)  # SystemExit (a failure) on an unknown command or option
