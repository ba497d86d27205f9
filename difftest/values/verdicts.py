"""The verdicts: their names, what each means, how bad each is, and when one fails a run.

This module is the one place these facts live; the CLI, the summary, the report, the pytest
plugin and ``assert_within_bounds`` read them from here, and a test keeps the README's verdict
table equal to :data:`MEANING`.

The rule (:func:`difftest.compare.compare_gradient` applies it per gradient, entry by entry,
claiming a violation only where it is certain):

1. ``precision`` if any in-model entry is certainly beyond the order-free bound. That bound
   covers every evaluation order of correctly rounded operations in the claimed format — the
   sequential order TorchLean certifies included — so such an entry is a certain violation
   whatever the (often looser) TorchLean bound says;
2. else ``domain`` if an entry is outside the model (non-finite where the format's hardware
   counterpart can overflow), or the backend's format cannot hold the inputs;
3. else ``order`` if any entry is certainly beyond the TorchLean bound;
4. else ``pass``.

``error`` (the backend raised, returned a wrong shape, crashed or hung in its worker process)
replaces the whole judgement; ``unsupported`` (the backend declares it does not take the case's
geometry, :mod:`difftest.supports`) stands where it was not run. Neither ``pass`` nor
``unsupported`` is a finding (:func:`is_finding`).
"""

from __future__ import annotations

from typing import Literal, get_args

#: A verdict, as a type (checked against :data:`VERDICTS` by a test).
Verdict = Literal["pass", "order", "precision", "domain", "error", "unsupported"]

VERDICTS: tuple[Verdict, ...] = get_args(Verdict)

#: What each verdict means, word for word as the README's verdict table says it.
MEANING = {
    "pass": "no entry certainly beyond the TorchLean certified bound or the order-free bound",
    "order": "some entry beyond the TorchLean bound (certified for one sequential fold order), every entry within "
    "the order-free bound: explained by summation order, blocking or FMA",
    "precision": "some entry certainly beyond the order-free bound, whatever the TorchLean bound says (the "
    "order-free bound covers every evaluation order, the sequential one included): no evaluation order of "
    "correctly rounded operations in the claimed format explains it (lower-precision arithmetic such as TF32, "
    "flushed subnormals, another algorithm such as Winograd or FFT, or a bug)",
    "domain": "outside the NF model: non-finite output where the format's hardware counterpart can overflow, or "
    "inputs the backend's format cannot hold",
    "error": "the backend raised, returned a wrong shape, crashed (its worker process died: a signal, an abort, an "
    "exit) or hung past the backend timeout",
    "unsupported": "not run: the backend declares it does not take the case's geometry (dilation, groups, per-axis "
    "stride or padding, a batch); not a finding",
}

#: How bad a verdict is, for "the worst verdict" and for ``--fail-on``.
SEVERITY = {"unsupported": -1, "pass": 0, "order": 1, "domain": 2, "precision": 3, "error": 4}

#: The verdicts that are findings: everything but ``pass`` and ``unsupported``.
FINDINGS = ("order", "precision", "domain", "error")

#: ``--fail-on`` choices: the least severe verdict that fails.
FAIL_ON = {"order": SEVERITY["order"], "precision": SEVERITY["precision"], "never": max(SEVERITY.values()) + 1}

FAIL_ON_HELP = "order = any verdict but pass (default); precision = precision or error; never = nothing"


def worst_verdict(verdicts) -> Verdict:
    """The most severe of ``verdicts`` (``pass`` when there are none; ``unsupported`` when that is
    all there is)."""
    return max(verdicts, key=SEVERITY.__getitem__, default="pass")


def is_finding(verdict: str) -> bool:
    """Whether a gradient's ``verdict`` is a finding (neither ``pass`` nor ``unsupported``)."""
    return verdict in FINDINGS


def fails(verdict: str, fail_on: str) -> bool:
    """Whether ``verdict`` fails under ``--fail-on`` (see :data:`FAIL_ON_HELP`)."""
    return SEVERITY[verdict] >= FAIL_ON[fail_on]
