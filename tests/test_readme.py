"""The README tells the truth: its verdict table is the code's, its worked example is what runs, and
every python and shell block in it runs as pasted (or is listed below with the reason it is not)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from difftest.cli import main
from difftest.verdicts import MEANING

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = README.parent

SHELL = ("sh", "bash", "shell", "console")
PYTHON = ("python", "py")

#: Blocks the suite does not run, by their first line (runs of spaces count as one), and why.
NOT_RUN = {
    "pip install torch==2.13.0 -e '.[all]' && difftest run":
        "the quick start installs packages and runs the default one-minute campaign and the whole test suite",
    "difftest run # 30 s of numpy-float32 and nf-binary32, seed 1, into reports/ci":
        "campaigns of 30 s and 10 s that read a project's [tool.difftest] table and write into its reports/; "
        "tests/test_config.py checks where each setting comes from",
    "difftest fingerprint --backend numpy-float32 --backend torch-cpu-float32 --backend onnxruntime-cpu-float32 "
    "--backend jax-cpu-float32 --backend tf-cpu-float32 --backend numpy-bfloat16 --backend torch-cpu-bfloat16 "
    "--backend jax-cpu-bfloat16 --backend tf-cpu-bfloat16 --out reports/fingerprint":
        "regenerates the five-framework table: nine fingerprints, 33 s, too long for the suite's budget; "
        "tests/test_fingerprint.py fingerprints the CPU libraries and tests/test_jax.py, test_tensorflow.py the frameworks",
    "difftest bench --layer sampled":
        "a check of a 1x16x1282x722 layer with --sample 20000 (17 s); tests/test_sampling.py judges that shape "
        "sampled, finding a fault on its last row",
    "# on the CPU machines (once): a scheduler and workers":
        "starts a Dask scheduler and workers on other machines; tests/test_distributed.py runs model and run "
        "against a distributed.LocalCluster",
    "pytest --difftest [--difftest-backend NAME …] [--difftest-profile quick|ci|nightly|hardware] [--difftest-time-budget S] \\":
        "a synopsis (optional arguments in brackets), not a command; tests/test_plugin.py runs the plugin's options",
}


def readme_blocks() -> list[tuple[str, str, str]]:
    """``(section, language, text)`` of every fenced block of README.md in a language above."""
    blocks, section = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.M | re.S):
        if m.group(1):
            section = m.group(1).lstrip("#").strip()
        elif m.group(2) in SHELL + PYTHON:
            blocks.append((section, m.group(2), m.group(3)))
    return blocks


def first_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[0].split())


def block_id(block) -> str:
    section, lang, text = block
    return f"{section}: {lang}: {first_line(text)[:40]}"


RUN = [b for b in readme_blocks() if first_line(b[2]) not in NOT_RUN]


def test_the_readme_verdict_table_is_the_one_in_difftest_verdicts():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Verdicts"):text.index("## Worked example")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", section, flags=re.M))
    assert rows == MEANING


def test_the_worked_example_prints_what_the_readme_shows(capsys, monkeypatch):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ (difftest check examples/cancellation\.npz.*?)\n(.*?)\n\.\.\.\n\$ echo \$\?\n(\d+)\n```",
                      text, flags=re.S)
    command, shown, code = block.group(1), block.group(2).splitlines(), int(block.group(3))
    monkeypatch.chdir(README.parent)
    assert main(shlex.split(command)[1:]) == code
    printed = capsys.readouterr().out.splitlines()
    assert printed[:len(shown)] == shown


def test_every_block_not_run_is_in_the_readme_with_a_reason():
    firsts = {first_line(text) for _, _, text in readme_blocks()}
    for line, reason in NOT_RUN.items():
        assert line in firsts, f"NOT_RUN lists a block that is no longer in the README: {line!r}"
        assert reason.strip()
    assert RUN, "no README block is run"


def _env(tmp_path, **variables) -> dict:
    """The environment of a block: none of the caller's DIFFTEST_* settings (the README shows the
    defaults), hypothesis's example database out of the repository, and the command's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFTEST_")}
    return {**env, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis"), **variables}


#: Runs a python block as pasted at the repository root (``sys.path[0]`` is the current directory),
#: then calls the ``test_*`` functions it defines. Hypothesis is derandomized (the suite gives the
#: same answer every time); the block's own settings (deadline, max_examples) stay in force.
_PYTHON_DRIVER = """
import sys
from hypothesis import settings
settings.register_profile("readme", derandomize=True, database=None)
settings.load_profile("readme")
namespace = {"__name__": "__main__"}
exec(compile(open(sys.argv[1], encoding="utf-8").read(), "README block", "exec"), namespace)
for name, f in list(namespace.items()):
    if name.startswith("test_") and callable(f):
        f()
        print(f"called {name}")
"""


def _run_python(text: str, tmp_path) -> None:
    if re.search(r"\btorch\b", text):
        pytest.importorskip("torch", reason="the block uses torch, which is not installed")
    script = tmp_path / "block.py"
    script.write_text(text, encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", _PYTHON_DRIVER, str(script)], cwd=ROOT, env=_env(tmp_path),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"the block failed as pasted:\n{r.stdout}\n{r.stderr}"
    for name in re.findall(r"^def (test_\w+)", text, flags=re.M):
        assert f"called {name}" in r.stdout


def _commands(lang: str, text: str) -> list[tuple[str, list[str]]]:
    """``(command, shown output lines)`` of a shell block: ``$ `` lines and their output in a console
    block, every line (``\\`` continues one) in an sh block."""
    lines = text.replace("\\\n", " ").splitlines()
    if lang != "console":
        return [(line.strip(), []) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            out.append((line[2:].strip(), []))
        elif out:
            out[-1][1].append(line)
    return out


def _argv(command: str) -> tuple[list[str], dict]:
    """The argv of a plain ``[VAR=value …] difftest|python ARGS [# comment]`` command, and its variables."""
    argv = shlex.split(command, comments=True)
    variables = {}
    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
        name, value = argv.pop(0).split("=", 1)
        variables[name] = value
    programs = {"difftest": [sys.executable, "-m", "difftest"], "python": [sys.executable]}
    if not argv or argv[0] not in programs or any(op in argv for op in ("&&", "||", "|", ";", ">", "<")):
        pytest.fail(f"the test cannot run {command!r}: make it a plain difftest/python command, "
                    "or list its block in NOT_RUN with the reason")
    return programs[argv[0]] + argv[1:], variables


def _run_shell(lang: str, text: str, tmp_path) -> None:
    previous = None
    for command, shown in _commands(lang, text):
        if command == "echo $?":  # the exit code of the previous command
            assert previous is not None and shown, "echo $? needs a command before it and the code it prints"
            assert previous.returncode == int(shown[0]), \
                f"{previous.args} exited {previous.returncode}, the README says {shown[0]}:\n{previous.stderr}"
            continue
        argv, variables = _argv(command)
        previous = r = subprocess.run(argv, cwd=ROOT, env=_env(tmp_path, **variables), capture_output=True, text=True)
        assert r.returncode in (0, 1), f"{command!r} exited {r.returncode}:\n{r.stderr}"  # 1: a finding
        printed = r.stdout.splitlines()
        if "..." in shown:  # the README shows the beginning of the output
            shown = shown[:shown.index("...")]
            printed = printed[:len(shown)]
        if shown:
            assert printed == shown, f"{command!r} printed something else than the README shows"


@pytest.mark.parametrize("block", RUN, ids=block_id)
def test_the_readme_block_runs_as_pasted(block, tmp_path):
    _, lang, text = block
    if lang in PYTHON:
        _run_python(text, tmp_path)
    else:
        _run_shell(lang, text, tmp_path)
