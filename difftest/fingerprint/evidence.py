"""Evidence: fingerprints written as ``fingerprints.json`` with their evidence cases, and each
claim re-derived from its evidence (:func:`rederive`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..values.case import Case
from .slots import PROPERTIES, RUNS, _run, read_rows, slots_of
from .infer import Context, Obs, _infer_order, _infer_scaling, scaling_case
from .probe import Fingerprint, _PROBES


# --- evidence: files and re-derivations --------------------------------------------------------------

def write(prints: list[Fingerprint], out: str | Path, failed=()) -> Path:
    """Write each claim's evidence case to ``out/<backend>/<gradient>-<property>.npz`` and
    ``out/fingerprints.json`` (the ``--json`` document, evidence paths relative to ``out``;
    ``failed``: ``(backend, reason)`` of backends that crashed or hung while probed)."""
    from ..records.store import FINGERPRINTS, file_name, write_json

    out = Path(out)
    for fp in prints:
        for grad, gp in fp.gradients.items():
            gp.paths = {}
            for prop in PROPERTIES:
                path = out / file_name(fp.backend) / f"{grad}-{prop}.npz"
                if prop in gp.evidence:
                    gp.paths[prop] = str(gp.evidence[prop].save(path))
                elif path.is_file():
                    path.unlink()  # the evidence of an earlier claim this run does not make
    write_json(out / FINGERPRINTS, to_json(prints, out, failed))
    return out / FINGERPRINTS


def to_json(prints: list[Fingerprint], base: Path | None = None, failed=()) -> dict:
    """``{"backends": [...], "failed": [{"backend", "reason"}]}``; evidence paths relative to ``base``
    where given."""
    return {"backends": [fp.to_dict(base) for fp in prints],
            "failed": [{"backend": b, "reason": why} for b, why in failed]}


def derive(prop: str, gradient: str, case: Case, output: np.ndarray, claims: dict | None = None):
    """Re-derive property ``prop`` of ``gradient`` from an evidence case and the backend's
    output on it (for ``deterministic``: a list of outputs), with the gradient's other claims
    as context. Returns the value (``(order, block)`` for ``order``)."""
    fmt = case.format
    if prop == "deterministic":
        return all(np.asarray(o).tobytes() == np.asarray(output[0]).tobytes() for o in output[1:])
    if prop == "error_scaling":
        _, entries, levels = scaling_case(gradient, fmt, case.geometry)
        return _infer_scaling(np.asarray(output).ravel()[entries], levels).value
    slots = slots_of(gradient, case.geometry)
    A, rows = read_rows(slots, case)
    res = np.asarray(output, dtype=np.float64).ravel()[slots.entries]
    obs = [Obs(A, r, float(v)) for r, v in zip(rows, res) if np.any(r)]
    ctx = Context(fmt, slots, dict(claims or {}))
    infer = _infer_order if prop == "order" else _PROBES[prop][1]
    return infer(ctx, obs).value


def rederive(path: str | Path, backend, prop: str, gradient: str, claims: dict | None = None):
    """Load an evidence case, run ``backend`` on it and re-derive ``prop`` (see :func:`derive`). (Not
    "replay": that word is the NF model's, :mod:`difftest.replay`.)"""
    if isinstance(backend, str):
        from ..backends import get_backend

        backend = get_backend(backend)
    case = Case.load(path)
    runs = RUNS if prop == "deterministic" else 1
    outs = [_run(backend, case) for _ in range(runs)]
    if any(o is None for o in outs):
        return None
    return derive(prop, gradient, case, outs if prop == "deterministic" else outs[0], claims)


