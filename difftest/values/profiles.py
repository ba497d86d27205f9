"""Campaign profiles: how large the fuzzed cases are (:class:`Limits`), how much a campaign
searches and how (:class:`Profile`), and the profiles by name (:data:`PROFILES`) — the one place
their names live (``difftest.config`` checks a ``profile`` setting against them; the CLI and the
pytest plugin offer them). Light: no hypothesis at import (a bad ``Limits`` raises hypothesis's
``InvalidArgument``, as the strategies do, imported only then)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields


def _require(ok: bool, name: str, rule: str, value) -> None:
    if not ok:
        from hypothesis.errors import InvalidArgument

        raise InvalidArgument(f"{name} must be {rule}, got {value!r}")


def _integer(x, name: str, least: int | None = None) -> int:
    rule = "an integer" if least is None else f"an integer >= {least}"
    _require(isinstance(x, numbers.Integral) and not isinstance(x, bool) and (least is None or x >= least), name, rule, x)
    return int(x)


@dataclass(frozen=True)
class Limits:
    """Size limits of generated cases (a campaign profile sets them)."""

    max_batch: int = 2
    max_channels: int = 4
    max_size: int = 8
    max_kernel: int = 3
    max_stride: int = 3
    max_padding: int = 2
    max_dilation: int = 3

    def __post_init__(self) -> None:
        for field in fields(self):
            _integer(getattr(self, field.name), f"Limits.{field.name}", 0 if field.name == "max_padding" else 1)

    @property
    def max_extent(self) -> int:
        """Largest image side a geometry can have: ``max_size``, or a dilated kernel's reach."""
        return max(self.max_size, self.max_dilation * (self.max_kernel - 1) + 1)

    @property
    def max_terms(self) -> int:
        """Most terms any gradient entry can sum (for overflow-free value ranges)."""
        big = max(self.max_batch * self.max_extent**2, self.max_channels * self.max_kernel**2)
        return max(big, 1)


@dataclass(frozen=True)
class Profile:
    """Sizes and effort of a campaign."""

    name: str
    limits: Limits
    examples: int  # hypothesis max_examples per round
    time_budget: float  # seconds for the whole campaign
    shrink_seconds: float  # cap on shrinking one finding
    shrink_steps: int = 300  # cap on the cases judged while shrinking one finding (work, not time)
    realistic: float = 0.0  # share of the search's time for real layers with probes (difftest.probes)
    max_macs: int = 2_000_000  # multiply-adds of one gradient of a real-layer case, at most
    real_batch: int = 2  # batch of a real-layer case, at most
    #: Entries judged per gradient (difftest.sampling; None: every entry). Small cases are covered
    #: whole; a real layer at its real size and batch is judged at this sample.
    sample: int | None = None

    @property
    def description(self) -> str:
        lim = self.limits
        small = f"fuzzed cases up to {lim.max_channels} channels, {lim.max_size}×{lim.max_size}"
        if not self.realistic:
            return small
        judged = f", judged at {self.sample} sampled entries per gradient" if self.sample else ""
        return (f"{round(100 * (1 - self.realistic))} % of the time {small}; {round(100 * self.realistic)} % real "
                f"layers (difftest.catalogue) with probes, batches up to {self.real_batch}, up to "
                f"{self.max_macs / 1e6:g} M multiply-adds{judged}")


PROFILES = {
    "quick": Profile("quick", Limits(max_batch=2, max_channels=3, max_size=6, max_kernel=3), 150, 60.0, 10.0,
                     realistic=0.3, max_macs=2_000_000),
    "ci": Profile("ci", Limits(max_batch=2, max_channels=6, max_size=10, max_kernel=3), 500, 300.0, 30.0,
                  realistic=0.3, max_macs=8_000_000),
    "nightly": Profile("nightly", Limits(max_batch=4, max_channels=16, max_size=16, max_kernel=5), 2000, 3600.0, 120.0,
                       realistic=0.3, max_macs=20_000_000),
    # For GPUs (the nightly GPU job): vendors pick tensor-core, Winograd and FFT kernels by shape, so
    # real layers run at their real input sizes with training batches, judged at sampled entries.
    "hardware": Profile("hardware", Limits(max_batch=2, max_channels=6, max_size=10, max_kernel=3), 400, 1800.0, 120.0,
                        realistic=0.9, max_macs=10_000_000_000, real_batch=32, sample=4096),
}
