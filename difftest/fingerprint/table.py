"""The fingerprint table, and fingerprinting several backends into one directory."""

from __future__ import annotations


from ..records.claims import COLUMNS, cell
from ..errors import BackendCrashed, BackendTimedOut
from .slots import default_geometry
from .probe import Fingerprint, fingerprint
from .evidence import write


# --- the table -------------------------------------------------------------------------------------

def table(prints: list[Fingerprint]) -> str:
    """A readable table: one row per backend × gradient, one column per property."""
    widths = {"product_bits": 4, "accumulator_bits": 4, "rounding": 11, "fma": 4, "subnormal_inputs": 7,
              "subnormal_outputs": 7, "order": 14, "deterministic": 6, "error_scaling": 11}
    head = (f"{'backend':<24} {'format':<9} {'gradient':<12} " + " ".join(f"{h:<{widths[k]}}" for k, h, _ in COLUMNS)).rstrip()
    lines = [head, "-" * len(head)]
    for fp in prints:
        for grad, gp in fp.gradients.items():
            lines.append(f"{fp.backend:<24} {fp.format:<9} {grad:<12} "
                         + " ".join(f"{cell(gp.claims, k):<{widths[k]}}" for k, _, _ in COLUMNS).rstrip())
    g = prints[0].geometry if prints else None
    if g is not None:
        lines.append("")
        lines.append(f"geometry: input {g.input_shape}, weight {g.weight_shape}, stride {g.stride}, padding {g.padding}")
    lines.append("prod/acc: significand bits of the inputs as multiplied / of the running sum; sub_in/sub_out: "
                 "subnormal inputs/results kept or flushed; determ: bitwise equal over 3 runs; "
                 "? = the probes cannot decide")
    return "\n".join(lines)


def fingerprint_all(backends: list, geometry=None, out=None, say=None) -> tuple[list, list]:
    """Fingerprint each backend at ``geometry`` (default :func:`default_geometry`) and write them
    into ``out`` (:func:`write`); a backend that crashes or hangs while probed (in its worker,
    :mod:`difftest.isolation`) is left out, with the reason. ``say(text)`` hears each backend.
    Returns the fingerprints and the failures ``(name, why)``."""
    import sys

    prints, failed = [], []
    g = geometry if geometry is not None else default_geometry()
    for b in backends:
        if say is not None:
            say(f"fingerprinting {b.name} at input {g.input_shape}, weight {g.weight_shape}, {g.text()}")
        try:
            prints.append(fingerprint(b, g))
        except (BackendCrashed, BackendTimedOut) as exc:
            failed.append((b.name, str(exc)))
            print(f"difftest: {b.name} was not fingerprinted: {exc} while probed", file=sys.stderr)
    if out is not None:
        write(prints, out, failed)
    return prints, failed
