"""Probing a backend: each property's probe rows and inference, run per gradient, and the
fingerprint with its evidence cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..values.case import Case
from ..values.geometry import GRADIENTS, Geometry
from .slots import (FIELDS, PROPERTIES, RUNS, Slots, _base_tensors, _results, _run, build_case, default_geometry,
                    plain_only, slots_of)
from .orders import verify_order
from .infer import (Context, Inference, NONE, Obs, _accumulator_rows, _fma_rows, _infer_accumulator, _infer_fma,
                    _infer_order, _infer_product, _infer_rounding, _infer_scaling,
                    _infer_subnormal_inputs, _infer_subnormal_outputs, _order_probe, _product_rows,
                    _rounding_rows, _subnormal_input_rows, _subnormal_output_rows, scaling_case)


# --- the whole fingerprint ----------------------------------------------------------------------

#: Probe builders and inferences of the slot-based properties.
_PROBES = {
    "accumulator_bits": (_accumulator_rows, _infer_accumulator),
    "product_bits": (_product_rows, _infer_product),
    "rounding": (_rounding_rows, _infer_rounding),
    "subnormal_outputs": (_subnormal_output_rows, _infer_subnormal_outputs),
    "subnormal_inputs": (_subnormal_input_rows, _infer_subnormal_inputs),
    "fma": (_fma_rows, _infer_fma),
}


@dataclass
class GradientPrint:
    """One gradient's claims and, for each claim, its evidence case."""

    claims: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # property -> Case
    paths: dict = field(default_factory=dict)  # property -> written file
    notes: dict = field(default_factory=dict)  # property -> why a probe's claim was withdrawn

    def to_dict(self, base: Path | None = None) -> dict:
        """The claims, the evidence files (relative to ``base`` where given: a result directory's
        ``fingerprints.json`` names files inside it) and the notes on withdrawn claims."""
        out = {k: self.claims.get(k) for k in FIELDS}
        out["evidence"] = {k: Path(self.paths[k]).relative_to(base).as_posix() if base is not None else self.paths[k]
                           for k in PROPERTIES if k in self.paths}
        if self.notes:
            out["notes"] = dict(self.notes)
        return out


@dataclass
class Fingerprint:
    """A backend's fingerprint: per gradient, :data:`FIELDS` and the evidence."""

    backend: str
    format: str
    geometry: Geometry
    gradients: dict = field(default_factory=dict)  # gradient -> GradientPrint

    def to_dict(self, base: Path | None = None) -> dict:
        return {"backend": self.backend, "format": self.format, "geometry": self.geometry.as_dict(),
                "gradients": {g: gp.to_dict(base) for g, gp in self.gradients.items()}}


class _Prober:
    """Runs one gradient's probes through a backend and keeps each property's evidence."""

    def __init__(self, backend, gradient: str, g: Geometry):
        self.backend, self.fmt = backend, backend.format
        self.ctx = Context(self.fmt, slots_of(gradient, g))
        self.print = GradientPrint()
        self.variants: set | None = None  # the emulation variants that reproduced the claimed order

    @property
    def slots(self) -> Slots:
        return self.ctx.slots

    def observe(self, A: float, rows: list[np.ndarray]) -> tuple[list[Obs], list[Case]]:
        obs, cases = [], []
        S = self.slots.count
        for start in range(0, len(rows), S):
            chunk = rows[start:start + S]
            case = build_case(self.slots, self.fmt, A, chunk)
            res = _results(self.slots, _run(self.backend, case), len(chunk))
            obs += [Obs(A, r, float(v)) for r, v in zip(chunk, res)]
            cases.append(case)
        return obs, cases

    def claim(self, prop: str, A: float, rows: list[np.ndarray], infer) -> Inference:
        """Probe ``rows``, infer, and keep the evidence: the one case, or a case of the decisive
        rows run again (the claim stands only if that case gives it again)."""
        if not rows:
            return NONE
        obs, cases = self.observe(A, rows)
        inf = infer(self.ctx, obs)
        if inf.value is None:
            return inf
        if len(cases) == 1:
            self.print.evidence[prop] = cases[0]
            return inf
        keep = [rows[s] for s in inf.decisive]
        if not keep or len(keep) > self.slots.count:
            return NONE
        again, (case,) = self.observe(A, keep)
        if infer(self.ctx, again).value != inf.value:
            return NONE
        self.print.evidence[prop] = case
        return inf

    def probe(self, prop: str) -> None:
        build, infer = _PROBES[prop]
        A, rows = build(self.ctx)
        self.ctx.claims[prop] = self.claim(prop, A, rows, infer).value

    def probe_order(self) -> None:
        A, rows = _order_probe(self.ctx, self.slots.count)
        inf = self.claim("order", A, rows, _infer_order)
        order, block = inf.value if inf.value is not None else (None, None)
        if order is None and rows:
            order = "unknown"
        self.ctx.claims["order"], self.ctx.claims["block"] = order, block
        if order == "unknown":
            self.print.evidence.pop("order", None)

    def verify_order(self) -> bool:
        """Emulate the claimed order on fresh random folds (:func:`verify_order`); where it does not
        reproduce them, withdraw it (``unknown``, the reason in ``notes``) and return False."""
        if self.ctx.claims.get("order") in (None, "unknown"):
            return True
        self.variants, why = verify_order(self.backend, self.slots, self.fmt, self.ctx.claims)
        if self.variants:
            return True
        self.ctx.claims["order"], self.ctx.claims["block"] = "unknown", None
        self.print.notes["order"] = why
        self.print.evidence.pop("order", None)
        return False

    def check_fma(self) -> None:
        """An ``fma`` claim must agree with the variants that reproduced the order."""
        fma = self.ctx.claims.get("fma")
        if fma is None or not self.variants or self.slots.gradient == "grad_bias":
            return
        if not any(fused == fma for fused, *_ in self.variants):
            self.ctx.claims["fma"] = None
            self.print.evidence.pop("fma", None)
            self.print.notes["fma"] = (f"the probe said {'fused' if fma else 'unfused'}, but only "
                                       f"{'unfused' if fma else 'fused'} products reproduced the claimed order "
                                       "on fresh random folds")

    def probe_scaling(self) -> None:
        case, entries, levels = scaling_case(self.slots.gradient, self.fmt, self.slots.geometry)
        out = _run(self.backend, case)
        res = np.full(len(entries), np.nan) if out is None else out.ravel()[entries]
        value = _infer_scaling(res, levels).value
        self.ctx.claims["error_scaling"] = value
        if value is not None:
            self.print.evidence["error_scaling"] = case

    def probe_determinism(self) -> None:
        g = self.slots.geometry
        t = _base_tensors(self.fmt, g)
        case = Case(t["input"], t["weight"], t["grad_output"], stride=g.stride, padding=g.padding, format=self.fmt,
                    gradients=(self.slots.gradient,))
        runs = [_run(self.backend, case) for _ in range(RUNS)]
        if any(r is None for r in runs):
            value = None
        else:
            value = all(r.tobytes() == runs[0].tobytes() for r in runs[1:])
        self.ctx.claims["deterministic"] = value
        if value is not None:
            self.print.evidence["deterministic"] = case

    def run(self) -> GradientPrint:
        for prop in ("accumulator_bits", "subnormal_outputs"):
            self.probe(prop)
        self.probe_scaling()
        self.probe_determinism()
        self.probe("rounding")
        self.probe_order()
        resting = ("product_bits", "fma", "subnormal_inputs")  # each may rest on the order
        for prop in resting:
            self.probe(prop)
        if not self.verify_order():
            for prop in resting:  # made again without the withdrawn order
                self.print.evidence.pop(prop, None)
                self.probe(prop)
        self.check_fma()
        self.print.claims = {k: self.ctx.claims.get(k) for k in FIELDS}
        return self.print


def fingerprint(backend, geometry: Geometry | None = None, gradients=GRADIENTS) -> Fingerprint:
    """The fingerprint of ``backend`` (a :class:`~difftest.backends.Backend` or a name) at
    ``geometry`` (default :func:`default_geometry`): per gradient, every property of
    :data:`FIELDS` (None where undecidable) and the evidence case of each claim."""
    if isinstance(backend, str):
        from ..backends import get_backend

        backend = get_backend(backend)
    g = default_geometry() if geometry is None else plain_only(geometry, "fingerprint")
    fp = Fingerprint(backend.name, backend.format.name, g)
    for grad in gradients:
        fp.gradients[grad] = _Prober(backend, grad, g).run()
    return fp


