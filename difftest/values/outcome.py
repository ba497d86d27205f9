"""Typed results: what a judgement found, in memory and as ``results.jsonl`` lines.

* :class:`GradientResult` — one gradient's verdict and numbers (and, in memory only, its
  per-entry :class:`EntryArrays`);
* :class:`BackendResult` — one backend on one case: a :class:`GradientResult` per requested
  gradient (``requested``: the case's requested gradients, all three unless a case asked for
  fewer), environment, timings, raw outputs (in memory only);
* :class:`ResultRecord` — one line of ``results.jsonl``: a backend result on a case, with the
  campaign context (case id, geometry, phase, seed, shard, files written).

Each has ``to_dict``/``from_dict``; every ``results.jsonl`` line carries ``schema``
(:data:`SCHEMA_VERSION`). Lines written before the schema existed read as schema 1; lines
without ``requested`` (written before gradients could be requested) read as all three. This
module imports no mathematics: reports and merges read results through it alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from ..errors import DifftestError
from .geometry import GRADIENTS, gradient_subset
from .verdicts import VERDICTS, Verdict, is_finding, worst_verdict

#: Version of the ``results.jsonl`` line layout (1: lines without a ``schema`` key).
SCHEMA_VERSION = 2


def jsonable(x):
    """JSON without NaN/Infinity literals: non-finite floats become "inf", "-inf", "nan"."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return jsonable(x.item())
    return x


def as_float(x) -> float:
    """Inverse of :func:`jsonable` for numbers ("inf" -> inf)."""
    return float(x)


# --- reading untrusted lines: every field checked for its type ------------------------------------

_NON_FINITE = ("inf", "-inf", "nan")


def _bad(name: str, want: str, got) -> DifftestError:
    shown = repr(got)
    return DifftestError(f"{name} must be {want}, got {shown[:60] + '…' if len(shown) > 60 else shown}")


def number(v, name: str) -> float:
    """A JSON number, or one of the strings :func:`jsonable` writes for non-finite ones."""
    if isinstance(v, bool) or not (isinstance(v, (int, float)) or v in _NON_FINITE):
        raise _bad(name, 'a number (or "inf", "nan")', v)
    return float(v)


def integer(v, name: str, least: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (least is not None and v < least):
        raise _bad(name, "an integer" + (f" >= {least}" if least is not None else ""), v)
    return v


def _of_type(kind: type, want: str):
    """A check that the value is a ``kind``."""
    def check(v, name: str):
        if not isinstance(v, kind):
            raise _bad(name, want, v)
        return v
    return check


text = _of_type(str, "a string")
flag = _of_type(bool, "true or false")
mapping = _of_type(dict, "a JSON object")


def name_text(v, name: str) -> str:
    """A non-empty one-line string (a backend, format or gradient name)."""
    if not text(v, name).strip() or any(c in v for c in "\n\r\x00"):
        raise _bad(name, "a non-empty one-line string", v)
    return v


def listing(v, name: str, item=None) -> list:
    if not isinstance(v, list):
        raise _bad(name, "a list", v)
    return v if item is None else [item(x, f"{name}[{i}]") for i, x in enumerate(v)]


def one_of(values: tuple):
    """A check that the value is one of ``values``."""
    def check(v, name: str):
        if v not in values:
            raise _bad(name, f"one of {', '.join(map(str, values))}", v)
        return v
    return check


def shard_text(v, name: str) -> str:
    if not (isinstance(v, str) and re.fullmatch(r"\d+/\d+", v)):
        raise _bad(name, "a shard K/N", v)
    return v


def optional(check):
    """``check`` for a value that may also be null."""
    return lambda v, name: None if v is None else check(v, name)


def geometry_of(v, name: str) -> dict:
    """A geometry as :meth:`Geometry.as_dict` writes it, checked to be one (an empty one is allowed)."""
    from .geometry import Geometry

    mapping(v, name)
    if not v:
        return v
    try:
        for k in ("N", "C", "H", "W", "O", "kH", "kW", "groups", "out_h", "out_w"):
            if k in v:
                integer(v[k], f"{name}.{k}", 0)
        for k in ("stride", "padding", "dilation"):
            if k in v and not isinstance(v[k], int):
                listing(v[k], f"{name}.{k}", lambda x, n: integer(x, n, 0))
        Geometry.from_dict(v)
    except (KeyError, TypeError, ValueError, DifftestError) as exc:
        raise DifftestError(f"{name} is not a geometry: {exc}") from None
    return v


def _worst(v, name: str) -> dict | None:
    if v is None:
        return None
    mapping(v, name)
    return {k: (listing(x, f"{name}.index", lambda i, n: integer(i, n, 0)) if k == "index" else number(x, f"{name}.{k}"))
            for k, x in v.items()}


def _sampled(v, name: str) -> dict:
    mapping(v, name)
    judged, total = integer(v.get("judged"), f"{name}.judged", 0), integer(v.get("total"), f"{name}.total", 0)
    if judged > total:
        raise _bad(f"{name}.judged", f"at most total ({total})", judged)
    strata = {name_text(k, f"{name}.strata"): integer(x, f"{name}.strata.{k}", 0)
              for k, x in mapping(v.get("strata", {}), f"{name}.strata").items()}
    return {"judged": judged, "total": total, "strata": strata, "by_cost": flag(v.get("by_cost", False), f"{name}.by_cost"),
            "terms": integer(v.get("terms", 0), f"{name}.terms", 0), "size": integer(v.get("size", 0), f"{name}.size", 0),
            "seed": integer(v.get("seed", 0), f"{name}.seed")}


def _known(d: dict, cls) -> dict:
    return {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}


def environment_id(env: dict) -> str:
    """A short content hash of an environment: equal environments, equal ids."""
    return hashlib.sha256(json.dumps(jsonable(env), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class EntryArrays:
    """Per entry of one gradient: ``|backend - exact|`` (float64 estimate) and both bounds."""

    error: np.ndarray
    bound: np.ndarray
    bound_order_free: np.ndarray

    NAMES = ("error", "bound", "bound_order_free")

    def ratio(self, bound: str = "bound") -> np.ndarray:
        """error / bound per entry (0 where both are 0, inf where only the bound is)."""
        from .directed import ratio

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(ratio(self.error, getattr(self, bound)))


@dataclass
class GradientResult:
    """How one backend's gradient compares with the exact spec."""

    verdict: Verdict
    max_ratio: float = 0.0
    max_ratio_order_free: float = 0.0
    violations: int = 0
    violations_order_free: int = 0
    worst_index: list[int] | None = None
    worst: dict | None = None
    message: str = ""
    out_of_model: int = 0
    #: Judged at chosen entries only (``--sample``, :mod:`difftest.sampling`): ``{"judged",
    #: "total", "strata", "by_cost", "terms", "size", "seed"}`` (``size``: the sample's N); None where every entry was judged. ``pass`` then means no
    #: certain violation among the judged entries.
    sampled: dict | None = None
    entries: EntryArrays | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "entries" and not (f.name == "sampled" and self.sampled is None)}

    @property
    def sampled_text(self) -> str:
        """``sampled: judged / total`` (empty where every entry was judged)."""
        if self.sampled is None:
            return ""
        return f"sampled: {self.sampled['judged']:,} / {self.sampled['total']:,}"

    @classmethod
    def from_dict(cls, d: dict, name: str = "gradient") -> "GradientResult":
        """A result from its JSON form, every field checked (:class:`DifftestError` names the bad one)."""
        mapping(d, name)
        if d.get("verdict") not in VERDICTS:
            raise _bad(f"{name}.verdict", f"one of {', '.join(VERDICTS)}", d.get("verdict"))
        index = d.get("worst_index")
        return cls(
            verdict=d["verdict"],
            max_ratio=number(d.get("max_ratio", 0.0), f"{name}.max_ratio"),
            max_ratio_order_free=number(d.get("max_ratio_order_free", 0.0), f"{name}.max_ratio_order_free"),
            violations=integer(d.get("violations", 0), f"{name}.violations", 0),
            violations_order_free=integer(d.get("violations_order_free", 0), f"{name}.violations_order_free", 0),
            worst_index=None if index is None else listing(index, f"{name}.worst_index", lambda i, n: integer(i, n, 0)),
            worst=_worst(d.get("worst"), f"{name}.worst"),
            message=text(d.get("message", ""), f"{name}.message"),
            out_of_model=integer(d.get("out_of_model", 0), f"{name}.out_of_model", 0),
            sampled=optional(_sampled)(d.get("sampled"), f"{name}.sampled"),
        )


def verdict_only(verdict: str, message: str) -> GradientResult:
    """A result with no numbers (``error`` and whole-case ``domain`` verdicts)."""
    return GradientResult(verdict=verdict, message=message)


def requested_of(gradients: dict, requested=None) -> tuple[str, ...]:
    """The requested gradients of a result (``None``: those it holds), checked to be exactly the
    gradients it holds, in ``GRADIENTS`` order."""
    requested = gradient_subset(gradients if requested is None else requested)
    if set(gradients) != set(requested):
        raise DifftestError(f"gradients must hold exactly the requested {', '.join(requested)}, "
                            f"got {', '.join(map(str, gradients)) or 'none'}")
    return requested


def _gradients_from(d: dict) -> tuple[dict[str, GradientResult], tuple[str, ...]]:
    """A line's gradients and the requested set (a line without ``requested``: all three)."""
    grads = d.get("gradients")
    requested = d.get("requested", list(GRADIENTS))
    listing(requested, "requested", name_text)
    requested = gradient_subset(requested)
    if not isinstance(grads, dict) or set(grads) != set(requested):
        raise DifftestError(f"gradients must hold exactly {', '.join(requested)}")
    return {g: GradientResult.from_dict(grads[g], f"gradients.{g}") for g in requested}, requested


@dataclass
class BackendResult:
    """One backend's outcome on one case (the ``results`` entries of ``check --json``): a
    result for each requested gradient, and nothing for the others."""

    backend: str
    format: str
    gradients: dict[str, GradientResult]
    seconds: float = 0.0
    error: str = ""
    environment: dict = field(default_factory=dict)
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    #: The gradients requested of the backend (``GRADIENTS`` order); default: those it holds.
    requested: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.requested = requested_of(self.gradients, self.requested)

    @property
    def verdict(self) -> str:
        """The worst verdict over the requested gradients."""
        return worst_verdict(r.verdict for r in self.gradients.values())

    @property
    def environment_id(self) -> str:
        return environment_id(self.environment)

    def entry_arrays(self) -> dict[str, np.ndarray]:
        """``{g}__{error,bound,bound_order_free}`` of every gradient that has them (for reports)."""
        out = {}
        for g, r in self.gradients.items():
            if r.entries is not None:
                for name in EntryArrays.NAMES:
                    out[f"{g}__{name}"] = getattr(r.entries, name)
        return out

    def lightweight(self) -> "BackendResult":
        """The same result without raw outputs and per-entry arrays (for caches)."""
        grads = {g: GradientResult(**r.to_dict()) for g, r in self.gradients.items()}
        return BackendResult(self.backend, self.format, grads, self.seconds, self.error, self.environment,
                             timings=self.timings, requested=self.requested)

    def to_dict(self) -> dict:
        d = {
            "backend": self.backend,
            "format": self.format,
            "requested": list(self.requested),
            "gradients": {g: r.to_dict() for g, r in self.gradients.items()},
            "seconds": self.seconds,
            "environment": self.environment,
        }
        if self.error:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackendResult":
        mapping(d, "result")
        gradients, requested = _gradients_from(d)
        return cls(backend=name_text(d.get("backend"), "backend"), format=name_text(d.get("format"), "format"),
                   gradients=gradients, requested=requested, seconds=number(d.get("seconds", 0.0), "seconds"),
                   error=text(d.get("error", ""), "error"), environment=mapping(d.get("environment", {}), "environment"))


class FindingKey(NamedTuple):
    """A ``(backend, gradient, verdict)``: what makes a finding distinct."""

    backend: str
    gradient: str
    verdict: Verdict

    def to_dict(self) -> dict:
        return self._asdict()


#: The phases of a result line: a case the search drew; a finding's shrunk reproducer; a finding's
#: first case, kept where shrinking was cut short or off; a layer of ``difftest model``.
PHASES = ("search", "shrunk", "unshrunk", "layer")


@dataclass
class ResultRecord:
    """One line of ``results.jsonl``: one backend's result on one case (a :class:`BackendResult`,
    held whole), with the campaign's context. The result's fields are flattened into the line
    only by :meth:`to_dict` (``backend``, ``format``, ``gradients``, ``requested``, and its
    ``error`` as ``traceback``); read back, its environment is the line's ``environment_id``'s
    (``environments.json``), not held here."""

    case_id: str
    result: BackendResult
    geometry: dict = field(default_factory=dict)
    phase: str = "search"  # one of PHASES
    batch_extension: bool = False
    #: :attr:`difftest.geometry.Geometry.extensions` of the case (batch, dilation, per-axis ...).
    extensions: list = field(default_factory=list)
    seed: int | None = None
    shard: str = "1/1"
    round: int | None = None
    timings: dict = field(default_factory=dict)
    environment_id: str = ""
    case_file: str | None = None
    outputs_file: str | None = None
    finding: FindingKey | None = None
    #: On a finding's record: the largest searched case that showed it, where that is not the
    #: reproducer (a GPU finding shrunk to a tiny shape may have left the kernel that failed):
    #: ``{"case_id", "case_file", "geometry", "macs"}``, and ``"sample": {"size", "seed"}`` where it
    #: was judged at sampled entries (its replay samples the same ones).
    largest_case: dict | None = None
    schema: int = SCHEMA_VERSION

    REQUIRED = ("case_id", "backend", "format", "gradients")

    # --- the result's fields, as the line has them ---------------------------------------
    backend = property(lambda self: self.result.backend)
    format = property(lambda self: self.result.format)
    gradients = property(lambda self: self.result.gradients)
    requested = property(lambda self: self.result.requested)
    traceback = property(lambda self: self.result.error or None)

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @classmethod
    def of(cls, result: BackendResult, case_id: str, geometry: dict, **context) -> "ResultRecord":
        return cls(case_id=case_id, result=result.lightweight(), geometry=geometry,
                   batch_extension=geometry.get("N", 1) > 1, extensions=_extensions(geometry), **context)

    def to_dict(self) -> dict:
        """The line: ``schema``, the result's fields, then the context, in the order lines have
        always had them (``traceback`` between ``outputs_file`` and ``finding``)."""
        d = {"schema": self.schema, "case_id": self.case_id, "backend": self.backend, "format": self.format,
             "gradients": {g: r.to_dict() for g, r in self.gradients.items()}, "requested": list(self.requested)}
        for f in fields(self):
            if f.name in ("schema", "case_id", "result"):
                continue
            if f.name == "finding" and self.traceback is not None:
                d["traceback"] = self.traceback
            v = getattr(self, f.name)
            if v is None and f.name in ("case_file", "outputs_file", "finding", "round", "largest_case"):
                continue
            d[f.name] = v.to_dict() if f.name == "finding" else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResultRecord":
        """A record from a parsed line, every field checked for its type (unknown keys are ignored);
        :class:`DifftestError` names what is missing or wrong. Paths are the store's to check."""
        if not isinstance(d, dict):
            raise DifftestError("a result line must be a JSON object")
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise DifftestError(f"the line lacks {', '.join(repr(k) for k in missing)}")
        schema = integer(d.get("schema", 1), "schema", 1)
        if schema > SCHEMA_VERSION:
            raise DifftestError(f"schema {schema} is newer than this difftest reads ({SCHEMA_VERSION}); upgrade difftest")
        kw = _known(d, cls)
        for key, check in _RECORD_FIELDS.items():
            if key in kw:
                kw[key] = check(kw[key], key)
        if not re.fullmatch(r"[0-9a-f]{1,64}", kw["case_id"]):
            raise _bad("case_id", "a hexadecimal case id", kw["case_id"])
        gradients, requested = _gradients_from(d)
        traceback = optional(text)(d.get("traceback"), "traceback")
        kw["result"] = BackendResult(name_text(d.get("backend"), "backend"), name_text(d.get("format"), "format"),
                                     gradients, error=traceback or "", requested=requested)
        kw["schema"] = schema
        if kw.get("finding") is not None:
            f = mapping(kw["finding"], "finding")
            key = FindingKey(*(name_text(f.get(k), f"finding.{k}") for k in FindingKey._fields))
            if key.backend != kw["result"].backend or gradients.get(key.gradient, None) is None \
                    or gradients[key.gradient].verdict != key.verdict or not is_finding(key.verdict):
                raise DifftestError(f"finding {' '.join(key)} is not a finding of this line")
            kw["finding"] = key
        return cls(**kw)


def _largest(v, name: str) -> dict:
    mapping(v, name)
    out = {"case_id": name_text(v.get("case_id"), f"{name}.case_id"), "case_file": text(v.get("case_file"), f"{name}.case_file"),
           "geometry": geometry_of(v.get("geometry", {}), f"{name}.geometry"), "macs": integer(v.get("macs"), f"{name}.macs", 0)}
    if v.get("sample") is not None:
        sample = mapping(v["sample"], f"{name}.sample")
        out["sample"] = {"size": integer(sample.get("size"), f"{name}.sample.size", 1),
                         "seed": integer(sample.get("seed", 0), f"{name}.sample.seed")}
    return out


#: The checks of a result line's fields (``gradients``, ``requested``, ``finding``, ``schema``, and the
#: result's ``backend``, ``format`` and ``traceback``: their own).
_RECORD_FIELDS = {
    "case_id": name_text, "geometry": geometry_of,
    "phase": one_of(PHASES), "batch_extension": flag, "extensions": lambda v, n: listing(v, n, text),
    "seed": optional(integer), "shard": shard_text,
    "round": optional(integer), "timings": lambda v, n: {k: number(x, f"{n}.{k}") for k, x in mapping(v, n).items()},
    "environment_id": text, "case_file": optional(text), "outputs_file": optional(text),
    "largest_case": optional(_largest),
}


def _extensions(geometry: dict) -> list:
    """The extensions of a record's geometry (``Geometry.as_dict()``; ``[]`` where it is partial)."""
    from .geometry import Geometry

    try:
        return list(Geometry.from_dict(geometry).extensions)
    except (KeyError, TypeError, DifftestError):
        return []
