"""Settings of ``difftest run`` (and ``check``'s fail-on) from ``pyproject.toml`` and the environment.

Where a setting comes from, strongest first:

1. the command line (``--profile ci``);
2. an environment variable (``DIFFTEST_PROFILE=ci``);
3. the ``[tool.difftest]`` table of the nearest ``pyproject.toml`` at or above the current
   directory (``profile = "ci"``);
4. the built-in default.

Keys (the file's name, the variable's name, what it holds):

=============== ====================== ==========================================================
``backends``    ``DIFFTEST_BACKENDS``  backend names: a TOML list; the variable comma-separated
``profile``     ``DIFFTEST_PROFILE``   ``quick``, ``ci``, ``nightly`` or ``hardware``
``time_budget`` ``DIFFTEST_TIME_BUDGET`` seconds (> 0)
``out``         ``DIFFTEST_OUT``       result directory
``fail_on``     ``DIFFTEST_FAIL_ON``   ``order``, ``precision`` or ``never``
``seed``        ``DIFFTEST_SEED``      integer
``database``    ``DIFFTEST_DATABASE``  hypothesis example database directory; ``false`` in the
                                       file or ``none`` in the variable: no database
``expected``    ``DIFFTEST_EXPECTED``  expected-findings file (TOML, see :mod:`difftest.expectations`)
``backend_timeout`` ``DIFFTEST_BACKEND_TIMEOUT`` seconds one backend call may take (> 0; ``check``,
                ``run``, ``model``, ``fingerprint``)
``sample``      ``DIFFTEST_SAMPLE``    entries judged per gradient (an integer >= 1; ``check``,
                                       ``bounds``, ``model``; see :mod:`difftest.sampling`)
``scheduler``   ``DIFFTEST_SCHEDULER`` a Dask scheduler's address that judges (``run``, ``model``;
                                       see :mod:`difftest.distributed`)
=============== ====================== ==========================================================

The file's keys may also be spelled with hyphens (``time-budget``, ``fail-on``). Relative paths
in the file (``out``, ``database``, ``expected``) are relative to the directory of that ``pyproject.toml``;
on the command line and in variables, to the current directory. An empty variable counts as
unset. Every value is checked, and a wrong one is an error naming where it came from:

>>> load(cwd="/", environ={"DIFFTEST_PROFILE": "fast"})
Traceback (most recent call last):
...
difftest.errors.DifftestError: DIFFTEST_PROFILE=fast: profile must be one of quick, ci, nightly, hardware
>>> cfg = load(cwd="/", environ={"DIFFTEST_BACKENDS": "nf-binary32, numpy-float32", "DIFFTEST_SEED": "7"})
>>> cfg.get("backends"), cfg.get("seed"), cfg.source("seed")
(['nf-binary32', 'numpy-float32'], 7, 'DIFFTEST_SEED=7')

Reading the file needs ``tomllib`` (Python >= 3.11) or the ``tomli`` package; without either
the file is ignored and :attr:`Config.notes` says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import tomlfile
from .errors import DifftestError
from .values.profiles import PROFILES
from .values.verdicts import FAIL_ON

#: The campaign profiles' names, in order (:data:`difftest.profiles.PROFILES`, where they live).
PROFILE_NAMES = tuple(PROFILES)

#: Each key and its environment variable.
ENV_VARS = {
    "backends": "DIFFTEST_BACKENDS",
    "profile": "DIFFTEST_PROFILE",
    "time_budget": "DIFFTEST_TIME_BUDGET",
    "out": "DIFFTEST_OUT",
    "fail_on": "DIFFTEST_FAIL_ON",
    "seed": "DIFFTEST_SEED",
    "database": "DIFFTEST_DATABASE",
    "expected": "DIFFTEST_EXPECTED",
    "backend_timeout": "DIFFTEST_BACKEND_TIMEOUT",
    "sample": "DIFFTEST_SAMPLE",
    "scheduler": "DIFFTEST_SCHEDULER",
}
KEYS = tuple(ENV_VARS)
TABLE = "[tool.difftest]"

#: What each key is where neither the command line, the environment nor the file says
#: (:meth:`Config.resolve`; ``None``: the command's own default — every available backend, the
#: profile's time budget, no expected findings, every entry judged, judging in this process).
DEFAULTS = {
    "backends": None, "profile": "quick", "time_budget": None, "out": "reports/latest", "fail_on": "order", "seed": 0,
    "database": ".difftest/hypothesis", "expected": None, "backend_timeout": 600.0, "sample": None, "scheduler": None,
}


@dataclass(frozen=True)
class Setting:
    """A value and where it came from (``DIFFTEST_SEED=7``, ``/x/pyproject.toml [tool.difftest] seed``)."""

    value: object
    source: str
    origin: str = "env"  # "env" or "file"


@dataclass
class Config:
    """The settings found in the environment and the file (the command line is applied by the CLI)."""

    settings: dict[str, Setting] = field(default_factory=dict)
    file: Path | None = None  # the pyproject.toml read, if it has a [tool.difftest] table
    notes: list[str] = field(default_factory=list)

    def get(self, key: str, default=None):
        s = self.settings.get(key)
        return default if s is None else s.value

    def resolve(self, key: str, given=None):
        """The setting ``key`` as a command uses it: ``given`` (the command line's) where given,
        else the environment's or the file's, else :data:`DEFAULTS` — the one place the order is
        written, for the CLI and the pytest plugin alike."""
        if given is not None and given != []:
            return given
        return self.get(key, DEFAULTS[key])

    def source(self, key: str) -> str | None:
        s = self.settings.get(key)
        return None if s is None else s.source

    def __contains__(self, key: str) -> bool:
        return key in self.settings

    def sources(self) -> list[str]:
        """Where the settings came from, for a banner: variables first, then the file."""
        out = sorted(ENV_VARS[k] for k, s in self.settings.items() if s.origin == "env")
        if any(s.origin == "file" for s in self.settings.values()):
            out.append(f"{self.file} {TABLE}")
        return out


# --- checking values ---------------------------------------------------------------------------

def _check(key: str, value, source: str, from_text: bool, base: Path | None):
    """The value of ``key`` as difftest uses it; ``from_text``: it came from a variable."""

    def bad(what: str):
        return DifftestError(f"{source}: {key} must be {what}")

    if key == "profile":
        if value not in PROFILE_NAMES:
            raise bad("one of " + ", ".join(PROFILE_NAMES))
        return value
    if key == "fail_on":
        if value not in FAIL_ON:
            raise bad("one of " + ", ".join(FAIL_ON))
        return value
    if key in ("time_budget", "backend_timeout"):
        if from_text:
            try:
                value = float(value)
            except ValueError:
                raise bad("a number of seconds > 0") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise bad("a number of seconds > 0")
        return float(value)
    if key in ("seed", "sample"):
        want = "an integer" if key == "seed" else "a whole number of entries >= 1"
        if from_text:
            try:
                value = int(value)
            except ValueError:
                raise bad(want) from None
        if isinstance(value, bool) or not isinstance(value, int) or (key == "sample" and value < 1):
            raise bad(want)
        return value
    if key == "backends":
        if from_text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            if from_text:
                raise bad("backend names separated by commas (see 'difftest backends')")
            raise bad('a non-empty list of backend names, e.g. ["numpy-float32", "nf-binary32"] '
                      "(see 'difftest backends')")
        return [v.strip() for v in value]
    if key == "scheduler":
        if not isinstance(value, str) or not value.strip():
            raise bad("a Dask scheduler address (tcp://HOST:8786)")
        return value.strip()
    if key in ("out", "database", "expected"):
        if key == "database" and (value is False or (from_text and value.strip().lower() == "none")):
            return None  # no example database
        if not isinstance(value, str) or not value.strip():
            no_db = "" if key != "database" else " (or none: no database)" if from_text else " (or false: no database)"
            raise bad(("a file path" if key == "expected" else "a directory path") + no_db)
        path = Path(value).expanduser()
        return str(path if base is None or path.is_absolute() else base / path)
    raise AssertionError(key)  # pragma: no cover


# --- the sources -------------------------------------------------------------------------------

def find_pyproject(start: str | Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the current directory)."""
    here = Path(start if start is not None else Path.cwd()).absolute()
    for d in (here, *here.parents):
        candidate = d / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_file(path: Path, notes: list[str] | None = None) -> dict[str, Setting]:
    """The settings of ``path``'s ``[tool.difftest]`` table (none if it has no such table)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DifftestError(f"cannot read {path}: {exc}; fix the file or run from another directory") from None
    if not tomlfile.AVAILABLE:  # pragma: no cover - Python 3.10 without tomli
        if "tool.difftest" in text and notes is not None:
            notes.append(f"{path} {TABLE} ignored: reading TOML needs Python >= 3.11 or the tomli package "
                         "(pip install tomli)")
        return {}
    doc = tomlfile.parse(text, str(path), f"; fix it (difftest reads its {TABLE} table)")
    table = doc.get("tool", {}).get("difftest") if isinstance(doc.get("tool"), dict) else None
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise DifftestError(f"{path}: tool.difftest must be a table ({TABLE})")
    out: dict[str, Setting] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in KEYS:
            raise DifftestError(f"{path} {TABLE}: unknown key {raw_key!r}; the keys are {', '.join(KEYS)}")
        source = f"{path} {TABLE} {raw_key} = {_toml_repr(value)}"
        out[key] = Setting(_check(key, value, source, from_text=False, base=path.parent), source, "file")
    return out


def read_env(environ=None) -> dict[str, Setting]:
    """The settings of the ``DIFFTEST_*`` variables (an empty one counts as unset)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Setting] = {}
    for key, var in ENV_VARS.items():
        value = environ.get(var)
        if value is None or not value.strip():
            continue
        source = f"{var}={value}"
        out[key] = Setting(_check(key, value.strip(), source, from_text=True, base=None), source)
    return out


def load(cwd: str | Path | None = None, environ=None) -> Config:
    """The environment's and the nearest ``pyproject.toml``'s settings; the environment wins."""
    cfg = Config()
    path = find_pyproject(cwd)
    file_settings = read_file(path, cfg.notes) if path is not None else {}
    if file_settings:
        cfg.file = path
    cfg.settings = {**file_settings, **read_env(environ)}
    return cfg


def _toml_repr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return repr(value)
