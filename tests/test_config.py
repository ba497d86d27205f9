"""[tool.difftest] in pyproject.toml and DIFFTEST_* variables: command line > environment > file >
defaults, every value checked with a message naming where it came from."""

import json
import re
import shutil
from pathlib import Path

import pytest

from difftest import config
from difftest.backends import get_backend
from difftest.campaign import PROFILES
from difftest.cli import main
from difftest.store import read_campaign

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CANCELLATION = ROOT / "examples" / "cancellation.npz"
WORK = ["--examples", "3", "--rounds", "1", "--quiet", "--no-report"]  # bounded by work, not time


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    for var in config.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def pyproject(d: Path, body: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "pyproject.toml"
    p.write_text("[project]\nname = 'mine'\n\n" + body)
    return p


FULL = """[tool.difftest]
backends = ["nf-binary16"]
profile = "ci"
time_budget = 30
out = "res"
fail_on = "never"
seed = 5
database = false
sample = 4096
"""


def test_the_file_is_read_from_the_nearest_pyproject_at_or_above_the_current_directory(tmp_path):
    p = pyproject(tmp_path / "proj", FULL)
    sub = tmp_path / "proj" / "src" / "pkg"
    sub.mkdir(parents=True)
    cfg = config.load(cwd=sub, environ={})
    assert cfg.file == p
    assert {k: cfg.get(k) for k in config.KEYS} == {
        "backends": ["nf-binary16"], "profile": "ci", "time_budget": 30.0, "out": str(tmp_path / "proj" / "res"),
        "fail_on": "never", "seed": 5, "database": None, "expected": None, "backend_timeout": None,
        "sample": 4096, "scheduler": None}
    assert cfg.source("seed") == f"{p} [tool.difftest] seed = 5"
    pyproject(tmp_path / "proj" / "src", "")  # a nearer pyproject.toml without the table: no settings
    assert config.load(cwd=sub, environ={}).settings == {}


def test_variables_are_parsed_and_an_empty_one_is_unset():
    cfg = config.load(cwd="/", environ={"DIFFTEST_BACKENDS": " nf-binary16 ,numpy-float32,", "DIFFTEST_PROFILE": "",
                                        "DIFFTEST_TIME_BUDGET": "2.5", "DIFFTEST_SEED": "-3",
                                        "DIFFTEST_DATABASE": "none", "DIFFTEST_OUT": "o", "DIFFTEST_FAIL_ON": "order"})
    assert cfg.get("backends") == ["nf-binary16", "numpy-float32"] and "profile" not in cfg
    assert (cfg.get("time_budget"), cfg.get("seed"), cfg.get("database"), cfg.get("out")) == (2.5, -3, None, "o")


@pytest.mark.parametrize("var, value, message", [
    ("DIFFTEST_PROFILE", "fast", "DIFFTEST_PROFILE=fast: profile must be one of quick, ci, nightly, hardware"),
    ("DIFFTEST_FAIL_ON", "all", "DIFFTEST_FAIL_ON=all: fail_on must be one of order, precision, never"),
    ("DIFFTEST_TIME_BUDGET", "soon", "DIFFTEST_TIME_BUDGET=soon: time_budget must be a number of seconds > 0"),
    ("DIFFTEST_TIME_BUDGET", "-1", "DIFFTEST_TIME_BUDGET=-1: time_budget must be a number of seconds > 0"),
    ("DIFFTEST_SEED", "1.5", "DIFFTEST_SEED=1.5: seed must be an integer"),
    ("DIFFTEST_SAMPLE", "0", "DIFFTEST_SAMPLE=0: sample must be a whole number of entries >= 1"),
    ("DIFFTEST_BACKENDS", ",", "DIFFTEST_BACKENDS=,: backends must be backend names separated by commas"),
])
def test_a_bad_variable_is_one_line_naming_it(monkeypatch, capsys, var, value, message):
    monkeypatch.setenv(var, value)
    assert main(["run", *WORK, "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"difftest: error: {message}") and len(err.splitlines()) == 1
    assert not Path("o").exists()


@pytest.mark.parametrize("body, message", [
    ('profile = "fast"', '[tool.difftest] profile = "fast": profile must be one of quick, ci, nightly, hardware'),
    ("seed = true", "[tool.difftest] seed = true: seed must be an integer"),
    ("sample = 2.5", "[tool.difftest] sample = 2.5: sample must be a whole number of entries >= 1"),
    ('backends = "numpy-float32"', "backends must be a non-empty list of backend names"),
    ("time-budget = 0", "[tool.difftest] time-budget = 0: time_budget must be a number of seconds > 0"),
    ("timebudget = 3", "[tool.difftest]: unknown key 'timebudget'; the keys are backends, profile"),
    ("seed = ", "is not valid TOML"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, capsys, body, message):
    p = pyproject(tmp_path, "[tool.difftest]\n" + body + "\n")
    assert main(["run", *WORK]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"difftest: error: {p}") and message in err and len(err.splitlines()) == 1


def test_an_unknown_backend_in_the_configuration_names_its_source(monkeypatch, capsys):
    monkeypatch.setenv("DIFFTEST_BACKENDS", "nf-binary16,no-such-backend")
    assert main(["run", *WORK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difftest: error: DIFFTEST_BACKENDS=nf-binary16,no-such-backend: ")
    assert "no-such-backend" in err.split(": ", 2)[2]


def test_command_line_beats_environment_beats_file_beats_defaults(tmp_path, monkeypatch, capsys):
    pyproject(tmp_path, FULL.replace('profile = "ci"', 'profile = "quick"'))
    assert main(["run", *WORK]) == 0  # the file: fail_on never, out res, seed 5, no database
    info = read_campaign(tmp_path / "res")
    assert (info["seed"], info["backends"], info["time_budget_s"], info["database"]) == (5, ["nf-binary16"], 30.0, None)

    monkeypatch.setenv("DIFFTEST_SEED", "7")
    monkeypatch.setenv("DIFFTEST_OUT", "env-out")
    monkeypatch.setenv("DIFFTEST_TIME_BUDGET", "20")
    assert main(["run", *WORK]) == 0
    info = read_campaign(tmp_path / "env-out")
    assert (info["seed"], info["time_budget_s"], info["backends"]) == (7, 20.0, ["nf-binary16"])

    assert main(["run", *WORK, "--seed", "9", "--out", "cli-out", "--time-budget", "40", "--database", "db"]) == 0
    info = read_campaign(tmp_path / "cli-out")
    assert (info["seed"], info["time_budget_s"], info["database"]) == (9, 40.0, "db")

    monkeypatch.delenv("DIFFTEST_OUT")
    capsys.readouterr()
    assert main(["run", *WORK, "--json"]) == 0  # says where its settings came from, on stderr when not --quiet
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "res")
    assert main(["run", "--examples", "3", "--rounds", "1", "--no-report"]) == 0
    assert f"settings from DIFFTEST_SEED, DIFFTEST_TIME_BUDGET, {tmp_path / 'pyproject.toml'} [tool.difftest]" in \
        capsys.readouterr().err


def test_check_takes_fail_on_from_the_configuration_and_the_command_line_wins(monkeypatch, tmp_path, capsys):
    check = ["check", str(CANCELLATION), "--backend", "numpy-float32"]  # numpy's bias gradient: order
    assert main(check) == 1
    pyproject(tmp_path, '[tool.difftest]\nfail_on = "never"\n')
    assert main(check) == 0
    monkeypatch.setenv("DIFFTEST_FAIL_ON", "order")
    assert main(check) == 1
    assert main([*check, "--fail-on", "precision"]) == 0


def test_without_a_toml_reader_the_file_is_ignored_with_a_note(tmp_path, monkeypatch, capsys):
    pyproject(tmp_path, '[tool.difftest]\nfail_on = "never"\n')
    monkeypatch.setattr(config.tomlfile, "AVAILABLE", False)  # Python 3.10 without tomli
    cfg = config.load(environ={})
    assert cfg.settings == {} and "ignored" in cfg.notes[0] and "tomli" in cfg.notes[0]
    assert main(["check", str(CANCELLATION), "--backend", "numpy-float32"]) == 1
    assert "difftest: note: " in capsys.readouterr().err


def test_every_face_offers_the_campaigns_profiles_and_reading_them_needs_no_hypothesis():
    import subprocess
    import sys

    from difftest.arguments import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    choices = next(a.choices for a in run._actions if a.dest == "profile")
    assert list(choices) == list(PROFILES) == list(config.PROFILE_NAMES)
    # config (every command reads it) stays light: the profiles import without hypothesis
    code = "import sys, difftest.config; print('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_this_repositorys_pyproject_has_no_difftest_table():
    assert config.read_file(ROOT / "pyproject.toml") == {}


def test_the_readme_configuration_example_is_valid(tmp_path, capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    toml = re.search(r"```toml\n(.*?)```", section, flags=re.S).group(1)
    p = pyproject(tmp_path, toml)
    shutil.copyfile(README.parent / "difftest-expected.toml", tmp_path / "difftest-expected.toml")
    settings = config.read_file(p)
    # every key but scheduler, which would send the example's judging to a Dask cluster (the table
    # documents it; tests/test_distributed.py runs it against a local one)
    assert set(settings) == set(config.KEYS) - {"scheduler"}
    for name in settings["backends"].value:
        get_backend(name)
    assert "DIFFTEST_PROFILE=fast: profile must be one of quick, ci, nightly, hardware" in section.replace("\n", " ")
    # the example, bounded by work instead of its 30 s
    assert main(["run", "--examples", "3", "--rounds", "1", "--no-database", "--quiet", "--no-report"]) == 0
    info = read_campaign(tmp_path / "reports" / "ci")
    assert (info["backends"], info["seed"], info["time_budget_s"]) == (["numpy-float32", "nf-binary32"], 1, 30.0)
