"""Plugins register through the ``difftest.backends`` entry-point group; a broken one breaks nothing."""

import sys
import textwrap
from pathlib import Path

import pytest

from difftest.backends import all_backends, get_backend
from difftest.cli import main
from difftest.errors import UnknownBackend

EXAMPLE = str(Path(__file__).parents[1] / "examples" / "stride2_pad1.npz")


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """An installed distribution (a .dist-info on sys.path) declaring two entry points."""
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from difftest.backends import NumpyBackend
        from difftest.formats import BINARY32
        import numpy as np

        def make():
            return [NumpyBackend("plugin-numpy-float32", np.float32, BINARY32, "a plugin's own")]

        def broken():
            raise ImportError("libfoo.so not found")
    '''))
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[difftest.backends]\nplugin = my_plugin:make\nbroken-plugin = my_plugin:broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_plugin", None)


def test_a_plugin_backend_is_listed_and_runs(plugin_dist, tmp_path, capsys):
    known = all_backends()
    assert known["plugin-numpy-float32"].availability() == (True, "")
    ok, reason = known["broken-plugin"].availability()
    assert not ok and "libfoo.so not found" in reason
    assert "numpy-float32" in known and "nf-binary32" in known  # the others are unaffected
    assert main(["check", EXAMPLE, "--backend", "plugin-numpy-float32"]) in (0, 1)
    assert "plugin-numpy-float32" in capsys.readouterr().out


def test_unknown_backend_lists_the_known_names():
    with pytest.raises(UnknownBackend, match="numpy-float32"):
        get_backend("tensorflow-float32")


def test_an_unavailable_backend_is_a_usage_error_with_its_reason(plugin_dist, capsys):
    assert main(["check", EXAMPLE, "--backend", "broken-plugin"]) == 2
    assert "libfoo.so not found" in capsys.readouterr().err
