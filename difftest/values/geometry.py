"""Conv2D geometry of the spec (``Spec.Conv2DSpec``), generalised, and the gradients' names: a value
type that results, reports and faces read without the mathematics (the GEMM layouts the engines
share are :mod:`difftest.layouts`).

TorchLean's spec has one stride and one padding for both axes, no dilation and no groups. A
:class:`Geometry` also holds what real networks run:

* ``groups``: ``G`` independent convolutions side by side, group ``g`` taking input channels
  ``[g·C/G, (g+1)·C/G)`` and output channels ``[g·O/G, (g+1)·O/G)``; the weight is
  ``(O, C/G, kH, kW)``. Each group *is* the Lean spec, so the theorem applies group by group.
* ``dilation``: kernel tap ``(di, dj)`` reads the padded input at ``(i·sh + di·dh, j·sw + dj·dw)``.
* per-axis ``stride``, ``padding``, ``dilation``: a scalar or a pair ``(h, w)``.

Dilation and unequal per-axis stride or padding are outside ``Spec.Conv2DSpec``: there every
engine folds in the spec's order over this generalised index map, and outputs label the bound an
*extension* (:attr:`Geometry.extensions`), as they do the batch (``N > 1``).

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidCase

Pair = "int | tuple[int, int]"


def axis_pair(name: str, value, minimum: int) -> tuple[int, int]:
    """``value`` (an integer or a pair of integers) as ``(h, w)``, each ``>= minimum``; else a
    clear :class:`InvalidCase`."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    items = list(value) if isinstance(value, (tuple, list)) else [value, value]
    if len(items) != 2:
        raise InvalidCase(f"{name} must be an integer or a pair (h, w) of integers, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)) or int(v) != v:
            raise InvalidCase(f"{name} must be an integer or a pair (h, w) of integers, got {value!r}")
        if int(v) < minimum:
            raise InvalidCase(f"{name} must be >= {minimum}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def axis_of(value: Pair, axis: int) -> int:
    """The height (``axis`` 0) or width (1) value of a compact, validated ``value``."""
    return value if isinstance(value, int) else value[axis]


def compact(pair: tuple[int, int]) -> Pair:
    """A pair as written back: one integer where both axes agree."""
    return pair[0] if pair[0] == pair[1] else (pair[0], pair[1])


@dataclass(frozen=True)
class Geometry:
    """Shapes of one Conv2D layer: input ``(N, C, H, W)``, weight ``(O, C/groups, kH, kW)``.

    ``stride``, ``padding`` and ``dilation`` are kept compact (an integer where both axes agree,
    else ``(h, w)``); :attr:`sh`, :attr:`sw`, :attr:`ph`, :attr:`pw`, :attr:`dh`, :attr:`dw` are
    the per-axis integers every computation uses.
    """

    N: int
    C: int
    H: int
    W: int
    O: int
    kH: int
    kW: int
    stride: Pair = 1
    padding: Pair = 0
    dilation: Pair = 1
    groups: int = 1

    def __post_init__(self) -> None:
        for name in ("N", "C", "H", "W", "O", "kH", "kW", "groups"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or int(v) != v:
                raise InvalidCase(f"{name} must be an integer, got {v!r}")
            if v < 1:
                raise InvalidCase(f"{name} must be >= 1, got {v}")
            object.__setattr__(self, name, int(v))
        for name, minimum in (("stride", 1), ("padding", 0), ("dilation", 1)):
            object.__setattr__(self, name, compact(axis_pair(name, getattr(self, name), minimum)))
        if self.C % self.groups or self.O % self.groups:
            raise InvalidCase(
                f"groups={self.groups} must divide both the input channels C={self.C} and the output "
                f"channels O={self.O}"
            )
        for k, n, p, dil, axis in ((self.kH, self.H, self.ph, self.dh, "height"), (self.kW, self.W, self.pw, self.dw, "width")):
            if dil * (k - 1) + 1 > n + 2 * p:
                reach = f"kernel {axis} {k}" + (f" dilated by {dil} (reaching {dil * (k - 1) + 1})" if dil > 1 else "")
                raise InvalidCase(
                    f"{reach} exceeds the padded input {axis} {n} + 2*{p}: "
                    "the spec's truncated subtraction would silently give one output row, "
                    "which no framework computes; use a smaller kernel or more padding"
                )

    # --- per-axis values -------------------------------------------------------------

    @property
    def sh(self) -> int:
        return axis_of(self.stride, 0)

    @property
    def sw(self) -> int:
        return axis_of(self.stride, 1)

    @property
    def ph(self) -> int:
        return axis_of(self.padding, 0)

    @property
    def pw(self) -> int:
        return axis_of(self.padding, 1)

    @property
    def dh(self) -> int:
        return axis_of(self.dilation, 0)

    @property
    def dw(self) -> int:
        return axis_of(self.dilation, 1)

    @property
    def Cg(self) -> int:
        """Input channels of one group."""
        return self.C // self.groups

    @property
    def Og(self) -> int:
        """Output channels of one group."""
        return self.O // self.groups

    @property
    def extensions(self) -> tuple[str, ...]:
        """Where the geometry leaves ``Spec.Conv2DSpec`` (the bound folds in the spec's order over
        the generalised index map there): ``batch`` (N > 1), ``dilation``, ``per-axis stride``,
        ``per-axis padding``. Groups are not an extension: each group is the spec."""
        out = []
        if self.N > 1:
            out.append("batch")
        if self.dilation != 1:
            out.append("dilation")
        if self.sh != self.sw:
            out.append("per-axis stride")
        if self.ph != self.pw:
            out.append("per-axis padding")
        return tuple(out)

    def extension_note(self) -> str:
        """The one line outputs print where the TorchLean bound is an extension here ("" where the
        theorem applies as it stands)."""
        parts = []
        if "batch" in self.extensions:
            parts.append("batch N > 1: grad_weight/grad_bias bounds fold over (n, i, j), n outermost")
        general = [e for e in self.extensions if e != "batch"]
        if general:
            parts.append(f"{', '.join(general)}: the bounds fold in the spec's order over the generalised index map")
        if not parts:
            return ""
        return "; ".join(parts) + (" — a documented extension" if len(parts) == 1 else " — documented extensions") + \
            ", not a Lean theorem"

    @property
    def plain(self) -> bool:
        """No groups, no dilation, square stride and padding: TorchLean's own geometry (old
        case files and ids describe exactly these)."""
        return self.groups == 1 and self.dilation == 1 and isinstance(self.stride, int) and isinstance(self.padding, int)

    @property
    def out_h(self) -> int:
        """Mirrors TorchLean ``conv2dOutH``, ``(inH + 2p - kH) div s + 1``, with the dilated
        kernel's extent ``dh·(kH - 1) + 1`` for ``kH``."""
        return (self.H + 2 * self.ph - self.dh * (self.kH - 1) - 1) // self.sh + 1

    @property
    def out_w(self) -> int:
        """Mirrors TorchLean ``conv2dOutW`` (dilated as :attr:`out_h`)."""
        return (self.W + 2 * self.pw - self.dw * (self.kW - 1) - 1) // self.sw + 1

    @property
    def macs(self) -> int:
        """Multiply-adds of one gradient's GEMM (input and weight gradients alike)."""
        return self.N * self.Cg * self.O * self.kH * self.kW * self.out_h * self.out_w

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.O, self.Cg, self.kH, self.kW)

    @property
    def grad_output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.O, self.out_h, self.out_w)

    @property
    def bias_shape(self) -> tuple[int]:
        return (self.O,)

    def shape_of(self, gradient: str) -> tuple[int, ...]:
        """Shape of ``grad_input``, ``grad_weight`` or ``grad_bias``."""
        return {
            "grad_input": self.input_shape,
            "grad_weight": self.weight_shape,
            "grad_bias": self.bias_shape,
        }[gradient]

    def group_geometry(self) -> "Geometry":
        """One group's convolution (``groups = 1``, ``C/G`` in, ``O/G`` out)."""
        return Geometry(self.N, self.Cg, self.H, self.W, self.Og, self.kH, self.kW, self.stride, self.padding,
                        self.dilation)

    def split_groups(self, x: np.ndarray, w: np.ndarray, d: np.ndarray) -> list:
        """``(x_g, w_g, d_g)`` of each group, views of the arrays (:meth:`group_geometry` each)."""
        cg, og = self.Cg, self.Og
        return [(x[:, k * cg:(k + 1) * cg], w[k * og:(k + 1) * og], d[:, k * og:(k + 1) * og])
                for k in range(self.groups)]

    def conv_kwargs(self) -> dict:
        """``stride``, ``padding``, ``dilation``, ``groups`` as keywords (torch's names)."""
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    def text(self) -> str:
        """``stride 2, padding 1`` plus what is not the default: ``dilation 2, groups 32``. The one
        place a geometry becomes words (:meth:`layer_text`, :meth:`case_text` build on it)."""
        parts = [f"stride {_axis_text(self.stride)}", f"padding {_axis_text(self.padding)}"]
        if self.dilation != 1:
            parts.append(f"dilation {_axis_text(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups {self.groups}")
        return ", ".join(parts)

    def layer_text(self) -> str:
        """``1×64×56×56 → 64, 3×3, stride 1, padding 1``: a layer (input, output channels, kernel)."""
        return f"{self.N}×{self.C}×{self.H}×{self.W} → {self.O}, {self.kH}×{self.kW}, {self.text()}"

    def case_text(self) -> str:
        """``input 1×3×8×8, weight 4×3×3×3, stride 1, padding 1``: a case's tensors."""
        return (f"input {'×'.join(map(str, self.input_shape))}, weight {'×'.join(map(str, self.weight_shape))}, "
                f"{self.text()}")

    def as_dict(self) -> dict:
        """Plain JSON: the shapes, ``stride``/``padding``/``dilation`` (an integer or ``[h, w]``),
        ``groups``, ``out_h``, ``out_w``."""
        out = {k: getattr(self, k) for k in ("N", "C", "H", "W", "O", "kH", "kW")}
        for k in ("stride", "padding", "dilation"):
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out | {"groups": self.groups, "out_h": self.out_h, "out_w": self.out_w}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        """The inverse of :meth:`as_dict` (an older record without dilation and groups too)."""
        pair = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return cls(*(d[k] for k in ("N", "C", "H", "W", "O", "kH", "kW")),
                   *(pair(d.get(k, default)) for k, default in (("stride", 1), ("padding", 0), ("dilation", 1))),
                   d.get("groups", 1))

    @classmethod
    def of(cls, x_shape, w_shape, stride: Pair = 1, padding: Pair = 0, dilation: Pair = 1, groups: int = 1) -> "Geometry":
        """The geometry of an input and a weight of these shapes (a backend's arguments)."""
        N, C, H, W = x_shape
        O, _, kH, kW = w_shape
        return cls(N, C, H, W, O, kH, kW, stride, padding, dilation, groups)


def _axis_text(v: Pair) -> str:
    return f"({v[0]}, {v[1]})" if isinstance(v, tuple) else str(v)


GRADIENTS = ("grad_input", "grad_weight", "grad_bias")

#: The short names :func:`gradient_subset` also takes.
SHORT_GRADIENT_NAMES = {g.removeprefix("grad_"): g for g in GRADIENTS}


def gradient_subset(names) -> tuple[str, ...]:
    """A requested set of gradients as a tuple in :data:`GRADIENTS` order, duplicates merged.

    ``names`` is an iterable of names or one string of comma-separated names; ``input``,
    ``weight`` and ``bias`` stand for ``grad_input``, ``grad_weight`` and ``grad_bias``. An empty
    set or an unknown name raises :class:`InvalidCase` listing the valid names.

    >>> gradient_subset("bias, grad_input")
    ('grad_input', 'grad_bias')
    """
    valid = f"{', '.join(GRADIENTS)} (or {', '.join(SHORT_GRADIENT_NAMES)})"
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    try:
        names = list(names)
    except TypeError:
        raise InvalidCase(f"gradients must be names among {valid}, got {names!r}") from None
    chosen = set()
    for name in names:
        key = name.strip() if isinstance(name, str) else name
        full = SHORT_GRADIENT_NAMES.get(key, key) if isinstance(key, str) else None
        if full not in GRADIENTS:
            raise InvalidCase(f"unknown gradient {name!r}; valid: {valid}")
        chosen.add(full)
    if not chosen:
        raise InvalidCase(f"no gradient requested; request one or more of {valid}")
    return tuple(g for g in GRADIENTS if g in chosen)
