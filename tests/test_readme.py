"""The README tells the truth: its verdict table is the code's, its worked example is what runs."""

import re
import shlex
from pathlib import Path

from difftest.cli import main
from difftest.verdicts import MEANING

README = Path(__file__).resolve().parent.parent / "README.md"


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
