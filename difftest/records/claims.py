"""A fingerprint's claims in words (:mod:`difftest.fingerprint`): the properties shown, each with
its short heading (the terminal table) and its long one (the report), and the cell of each claim.
Light, so that the report, which imports no mathematics, words claims as the table does."""

from __future__ import annotations

#: ``(property, short heading, long heading)`` of each column, in order.
COLUMNS = (
    ("product_bits", "prod", "input bits"),
    ("accumulator_bits", "acc", "sum bits"),
    ("rounding", "rounding", "rounding"),
    ("fma", "fma", "FMA"),
    ("subnormal_inputs", "sub_in", "subnormal inputs"),
    ("subnormal_outputs", "sub_out", "subnormal results"),
    ("order", "order", "order"),
    ("deterministic", "determ", "deterministic"),
    ("error_scaling", "scaling", "error scaling"),
)


def cell(claims: dict, key: str) -> str:
    """The claim ``key`` in a cell: ``?`` where the probes cannot decide, ``yes``/``no``, a blocked
    order with its block length."""
    v = claims.get(key)
    if key == "order" and v == "blocked" and claims.get("block"):
        return f"blocked-{claims['block']}"
    if v is None:
        return "?"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)
