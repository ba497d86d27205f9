"""What judging a case will cost, before judging it: seconds and peak memory from its shapes.

The pipeline's work follows its multiply-adds (the GEMMs of the exact oracle and the order-free
bound, the NF folds) and its entries (every gradient entry is rounded, bounded and compared;
the output gradient is read once per tap). Its memory follows the largest array it lays out:
the im2col matrix of the input (``N·oh·ow × C·kH·kW``, for the weight gradient; the input
gradient is summed tap by tap from the compact tensors and lays out nothing larger than its own
entries), sliced into several exact float64 parts, so the peak is a multiple of it.

The constants were fitted on the development machine (2-core AMD EPYC, numpy 2.4, numba 0.68)
to the 53 layers of ``difftest bench --model resnet50`` judged for ``torch-cpu-float32`` (7.2 M
to 118 M multiply-adds, 27 k to 2.4 M entries, the 7×7 stride-2 stem included): 7.6 ns per
multiply-add and 670 ns per entry fitted, rounded up here. ``difftest bench`` prints the
estimate next to what it measures, so the calibration can be checked on any machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import DifftestError
from ..values.geometry import GRADIENTS, Geometry
from .sampling import judged_terms

NS_PER_MAC = 8.0  # per multiply-add of one gradient's GEMM
NS_PER_ENTRY = 700.0  # per entry of the gradients and of the output gradient
FIXED_SECONDS = 0.1
BYTES_PER_OPERAND_ENTRY = 13 * 8  # peak bytes per entry of the larger GEMM operand
BASE_BYTES = 64 * 2**20

#: Cases estimated above this many seconds are judged with progress lines.
PROGRESS_SECONDS = 3.0

#: A campaign's own work per searched case (hypothesis drawing it, its result lines), and per
#: backend call (a worker's round trip), measured on the development machine (quick profile).
CAMPAIGN_CASE_SECONDS = 0.008
CALL_SECONDS = 0.002
#: binary64's NF folds run in numpy, not compiled (:func:`difftest.replay.compiled`): this much slower.
NUMPY_FOLDS_FACTOR = 2.5


class CaseTooLarge(DifftestError):
    """The estimated peak memory of judging a case exceeds the limit."""


@dataclass(frozen=True)
class Estimate:
    macs: int  # multiply-adds of one gradient's GEMM
    seconds: float
    peak_bytes: int
    #: A sampled check (:mod:`difftest.sampling`): the terms its judged entries sum, all gradients.
    sampled_terms: int | None = None

    def describe(self) -> str:
        judged = "" if self.sampled_terms is None else f", sampled: {self.sampled_terms / 1e6:.1f} M terms judged"
        return (f"{self.macs / 1e6:.1f} M multiply-adds per gradient{judged}, estimated {self.seconds:.1f} s and "
                f"{format_size(self.peak_bytes)} peak memory")


#: A sampled check, per term its judged entries sum (gathered, not GEMMs: slower than a GEMM's
#: multiply-add), per entry of the tensors it holds whole (inputs, the backends' gradients), and
#: the bytes it holds per such entry and per gathered block.
NS_PER_SAMPLED_TERM = 100.0
NS_PER_HELD_ENTRY = 60.0
BYTES_PER_HELD_ENTRY = 6 * 8
BLOCK_BYTES = 24 * 8 * 2**22


def estimate(g: Geometry, formats: int = 1, sample: int | None = None, gradients=GRADIENTS) -> Estimate:
    """The cost of judging a case of geometry ``g`` with backends of ``formats`` formats; with
    ``sample=N``, of judging a sample of that size of ``gradients`` (:mod:`difftest.sampling`; the
    full check's cost where it covers every entry)."""
    macs = g.macs
    terms = None if sample is None else judged_terms(g, sample, gradients)
    if terms is not None:
        held = _entries(g) + g.N * g.C * g.H * g.W + g.O * g.Cg * g.kH * g.kW  # inputs, δ and the gradients
        seconds = FIXED_SECONDS + formats * NS_PER_SAMPLED_TERM * terms * 1e-9 + NS_PER_HELD_ENTRY * held * 1e-9
        return Estimate(macs, seconds, BASE_BYTES + BYTES_PER_HELD_ENTRY * held + BLOCK_BYTES, terms)
    cols_x = g.N * g.out_h * g.out_w * g.C * g.kH * g.kW  # im2col of all groups
    entries = (g.N * g.C * g.H * g.W, g.O * g.Cg * g.kH * g.kW, g.N * g.O * g.out_h * g.out_w)
    seconds = FIXED_SECONDS + formats * (NS_PER_MAC * macs + NS_PER_ENTRY * sum(entries)) * 1e-9
    return Estimate(macs, seconds, BASE_BYTES + BYTES_PER_OPERAND_ENTRY * max(cols_x, *entries))


def _entries(g: Geometry) -> int:
    return g.N * g.C * g.H * g.W + g.O * g.Cg * g.kH * g.kW + g.N * g.O * g.out_h * g.out_w


def campaign_case_seconds(g: Geometry, backends: int = 1, compiled: bool = True, sample: int | None = None) -> float:
    """What a campaign spends on one searched case of geometry ``g`` judged for ``backends``
    backends of one format: the oracle and the model once, each backend's call and comparison
    (one pass over the entries each), and the campaign's own work. ``compiled``: False for
    binary64, whose folds run in numpy; ``sample``: judged at at most that many entries per
    gradient (:mod:`difftest.sampling`: the oracle and the model cost the judged terms only). For
    scheduling (how many real layers to draw, which groups share a job), not for promises:
    relative costs matter there, not seconds."""
    terms = None if sample is None else judged_terms(g, sample)
    if terms is not None:
        oracle = NS_PER_SAMPLED_TERM * terms * 1e-9 * (1.0 if compiled else NUMPY_FOLDS_FACTOR)
        per_backend = CALL_SECONDS + NS_PER_HELD_ENTRY * _entries(g) * 1e-9
        return CAMPAIGN_CASE_SECONDS + oracle + backends * per_backend
    oracle = (NS_PER_MAC * g.macs + NS_PER_ENTRY * _entries(g)) * 1e-9 * (1.0 if compiled else NUMPY_FOLDS_FACTOR)
    per_backend = CALL_SECONDS + NS_PER_ENTRY * _entries(g) * 1e-9
    return CAMPAIGN_CASE_SECONDS + oracle + backends * per_backend


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_max_memory() -> int | None:
    """A safe share of the machine's memory: 60 % (None: no limit where it cannot be read)."""
    total = machine_memory()
    return None if total is None else int(total * 0.6)


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.I)
    if not m:
        raise DifftestError(f"a memory size looks like 8G, 512M or 1000000 (bytes), got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def too_large(e: Estimate, max_memory) -> bool:
    """Whether ``e`` is above ``max_memory`` (bytes; ``"auto"``: :func:`default_max_memory`;
    ``None``: no limit)."""
    if max_memory == "auto":
        max_memory = default_max_memory()
    return max_memory is not None and e.peak_bytes > max_memory


def refuse_if_too_large(e: Estimate, max_memory, sampled: Estimate | None = None, size: int | None = None) -> None:
    """Raise :class:`CaseTooLarge` with the estimate when it exceeds ``max_memory`` (as in
    :func:`too_large`); ``sampled``, the estimate of a sample of ``size`` entries, is suggested."""
    if not too_large(e, max_memory):
        return
    limit = default_max_memory() if max_memory == "auto" else max_memory
    what = "judging this case" if e.sampled_terms is None else f"judging {size} sampled entries per gradient"
    hint = ""
    if sampled is not None and not too_large(sampled, max_memory):
        hint = (f"; or judge sampled entries of each gradient with --sample {size} (sample= in Python): about "
                f"{sampled.seconds:.0f} s and {format_size(sampled.peak_bytes)}")
    raise CaseTooLarge(
        f"{what} needs about {format_size(e.peak_bytes)} of memory ({e.macs / 1e6:.1f} M multiply-adds "
        f"per gradient, about {e.seconds:.0f} s), above the "
        f"limit of {format_size(limit)}; use a smaller case, or raise the limit with --max-memory "
        f"(max_memory= in Python) if this machine has the memory{hint}"
    )
