"""What a backend takes: the geometry beyond the spec's own that it can compute.

The spec's convolution (TorchLean's) has one stride and one padding for both axes, no dilation
and no groups, over a batch of images. Networks and most frameworks go further, and some
kernels do not: TensorFlow's CPU kernels refuse dilated and grouped gradients, a function
written for integers cannot take a stride pair. A backend says what it takes with
:attr:`difftest.backends.Backend.supports`; campaigns draw for it only cases it takes, and
``check`` of a case it does not take gives ``unsupported`` for it (not a finding) instead of
running it.

Its format is the backend's ``format`` (a function names it in its spec,
``MODULE:CALLABLE:FORMAT``); a case of another format is converted exactly or refused, as
before.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

from .geometry import Geometry

__all__ = ["ALL", "SPEC", "Supports", "of_function"]


@dataclass(frozen=True)
class Supports:
    """The extensions of the spec's geometry a backend computes (all of them by default)."""

    dilation: bool = True  # a dilated kernel
    groups: bool = True  # grouped (and depthwise) convolutions
    per_axis: bool = True  # a stride, padding or dilation with unequal axes, given as a pair (h, w)
    batch: bool = True  # more than one image (N > 1)

    def why_not(self, g: Geometry) -> str:
        """Why a case of geometry ``g`` is not taken ("" when it is)."""
        missing = []
        if not self.dilation and g.dilation != 1:
            missing.append(f"dilation {g.dilation}")
        if not self.groups and g.groups != 1:
            missing.append(f"groups {g.groups}")
        if not self.per_axis:
            for name in ("stride", "padding", "dilation"):
                if isinstance(getattr(g, name), tuple):
                    missing.append(f"the per-axis {name} {getattr(g, name)}")
        if not self.batch and g.N != 1:
            missing.append(f"a batch of {g.N}")
        return ", ".join(missing)

    def takes(self, g: Geometry) -> bool:
        return not self.why_not(g)

    def __and__(self, other: "Supports") -> "Supports":
        """What both take."""
        return Supports(**{f.name: getattr(self, f.name) and getattr(other, f.name) for f in fields(self)})

    @property
    def label(self) -> str:
        """``""`` for everything, else what is left out (``"no dilation, no groups"``)."""
        words = {"dilation": "no dilation", "groups": "no groups", "per_axis": "equal axes", "batch": "batch 1"}
        return ", ".join(words[f.name] for f in fields(self) if not getattr(self, f.name))


#: Every extension (the default of a backend).
ALL = Supports()
#: The spec's own geometry only: one stride and padding, no dilation, no groups.
SPEC = Supports(dilation=False, groups=False, per_axis=False)


def accepts_keyword(fn, name: str) -> bool:
    """Whether ``fn`` (a conv2d_backward or a user function) takes the keyword ``name``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): the old, 5-argument way
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY)
               for p in params)


def of_function(fn) -> Supports:
    """What a plain function's signature says it takes: ``(x, w, d, stride, padding)`` is the
    spec's geometry, with an integer stride and padding; a ``dilation`` keyword adds dilation, a
    ``groups`` keyword groups (``**kwargs`` both). Pairs ``(h, w)`` only where a backend says so
    (a :class:`Backend` with ``supports``): a signature cannot tell."""
    return Supports(dilation=accepts_keyword(fn, "dilation"), groups=accepts_keyword(fn, "groups"),
                    per_axis=False)
