"""Conv2D geometry of the spec (``Spec.Conv2DSpec``), generalised, and the GEMM layouts the
engines share.

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

Every gradient entry is a sum over the spec's non-zero steps. :func:`gradient_product` evaluates
those sums from the compact tensors with float64 GEMMs batched over groups (one ``numpy.matmul``
over the group axis; the input gradient one GEMM per kernel tap, added into the input positions
the tap reaches), so a depthwise layer costs its own multiply-adds and nothing is laid out larger
than the tensors; the exact oracle and the order-free bound use it. :func:`gemm_operands` lays
the same sums out as dense batched GEMMs ``(G, rows, inner) @ (G, inner, cols)``, each entry's
terms along the inner dimension in the spec's fold order: the emulations fold along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidCase

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
        """``stride 2, padding 1`` plus what is not the default: ``dilation 2, groups 32``."""
        parts = [f"stride {_axis_text(self.stride)}", f"padding {_axis_text(self.padding)}"]
        if self.dilation != 1:
            parts.append(f"dilation {_axis_text(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups {self.groups}")
        return ", ".join(parts)

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


def pad(x: np.ndarray, g: Geometry) -> np.ndarray:
    """Mirrors ``padMultiChannel``: exact zeros around each image (``getAtOrZero``)."""
    return np.pad(x, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw)))


def window_index(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the padded image read by output ``(i, j)`` and kernel tap ``(di, dj)``:
    ``(i·sh + di·dh, j·sw + dj·dw)``. Returned arrays broadcast to ``(out_h, out_w, kH, kW)``."""
    i = np.arange(g.out_h)[:, None, None, None]
    j = np.arange(g.out_w)[None, :, None, None]
    di = np.arange(g.kH)[None, None, :, None]
    dj = np.arange(g.kW)[None, None, None, :]
    return i * g.sh + di * g.dh, j * g.sw + dj * g.dw


def im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """Columns ``[(n, i, j), (c, di, dj)] = x̃[n, c, i·sh + di·dh, j·sw + dj·dw]`` (zero where
    padded), for the channels ``x`` holds (one group's: ``x.shape[1]``)."""
    rows, cols = window_index(g)
    xp = pad(x, g)
    # (N, C, oh, ow, kH, kW) -> (N, oh, ow, C, kH, kW)
    patches = xp[:, :, rows, cols].transpose(0, 2, 3, 1, 4, 5)
    return patches.reshape(g.N * g.out_h * g.out_w, x.shape[1] * g.kH * g.kW)


def col2im_add(cols: np.ndarray, g: Geometry) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add columns ``(N·oh·ow, C·kH·kW)`` back into
    ``(N, C, H, W)`` (``C`` from the columns).

    Padded positions are dropped. Contributions to one entry are added in ``(di, dj)``
    row-major order, in the dtype of ``cols``.
    """
    (ph, pw), (sh, sw), (dh, dw) = (g.ph, g.pw), (g.sh, g.sw), (g.dh, g.dw)
    C = cols.shape[1] // (g.kH * g.kW)
    patches = cols.reshape(g.N, g.out_h, g.out_w, C, g.kH, g.kW).transpose(0, 3, 1, 2, 4, 5)
    out = np.zeros((g.N, C, g.H + 2 * ph, g.W + 2 * pw), dtype=cols.dtype)
    for di in range(g.kH):
        for dj in range(g.kW):
            r, c = di * dh, dj * dw
            out[:, :, r : r + sh * g.out_h : sh, c : c + sw * g.out_w : sw] += patches[..., di, dj]
    return out[:, :, ph : ph + g.H, pw : pw + g.W]


def _span(k: int, n_in: int, n_out: int, s: int, p: int, dil: int) -> tuple[slice, slice] | None:
    """Output positions ``o`` with ``0 <= o·s - p + k·dil < n_in``, and the input slice they reach."""
    off = k * dil - p
    lo = max(0, -(off // s))
    hi = min(n_out - 1, (n_in - 1 - off) // s)
    if hi < lo:
        return None
    start = lo * s + off
    return slice(lo, hi + 1), slice(start, start + (hi - lo) * s + 1, s)


def im2col_transposed(d: np.ndarray, g: Geometry) -> np.ndarray:
    """Rows ``[(n, h, w), (di, dj, o)] = δ[n, o, oi, oj]`` where ``oi·sh + di·dh = h + ph`` and
    ``oj·sw + dj·dw = w + pw`` (exact zero where no such output position exists), for the output
    channels ``d`` holds (one group's: ``d.shape[1]``).

    With it the input gradient is one GEMM against :func:`weight_rows`: entry ``(n, c, h, w)``
    sums exactly the non-zero steps of TorchLean's ``conv2dInputDerivSpec``. Built tap by tap:
    for each ``(di, dj)`` the valid ``(h, w)`` form a strided slice, filled from δ at once
    (contiguous runs over ``o``, the innermost column index).
    """
    O = d.shape[1]
    out = np.zeros((g.N, g.H, g.W, g.kH, g.kW, O), dtype=d.dtype)
    dt = d.transpose(0, 2, 3, 1)  # (N, out_h, out_w, O)
    for di, dj, (oi, hs), (oj, ws) in input_taps(g):
        out[:, hs, ws, di, dj, :] = dt[:, oi, oj, :]
    return out.reshape(g.N * g.H * g.W, g.kH * g.kW * O)


def weight_rows(w: np.ndarray, g: Geometry) -> np.ndarray:
    """One group's weight as a ``(kH·kW·O, C)`` matrix, matching :func:`im2col_transposed`'s columns."""
    return w.transpose(2, 3, 0, 1).reshape(g.kH * g.kW * w.shape[0], w.shape[1])


def grad_output_rows(d: np.ndarray, g: Geometry) -> np.ndarray:
    """δ as an ``(O, N·out_h·out_w)`` matrix, columns in the ``(n, i, j)`` fold order."""
    return d.transpose(1, 0, 2, 3).reshape(d.shape[1], g.N * g.out_h * g.out_w)


def _batched_im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """``(G, N·oh·ow, Cg·kH·kW)``: each group's :func:`im2col` (its channels are contiguous columns)."""
    cols = im2col(x, g)
    return cols.reshape(cols.shape[0], g.groups, -1).transpose(1, 0, 2)


def _batched_transposed(d: np.ndarray, g: Geometry) -> np.ndarray:
    """``(G, N·H·W, kH·kW·Og)``: each group's :func:`im2col_transposed`."""
    a = im2col_transposed(d, g)
    if g.groups == 1:
        return a[None]
    a = a.reshape(a.shape[0], g.kH * g.kW, g.groups, -1).transpose(2, 0, 1, 3)
    return a.reshape(g.groups, a.shape[1], -1)


def _batched_weight_rows(w: np.ndarray, g: Geometry) -> np.ndarray:
    """``(G, kH·kW·Og, Cg)``: each group's :func:`weight_rows`."""
    wg = w.reshape(g.groups, w.shape[0] // g.groups, *w.shape[1:]).transpose(0, 3, 4, 1, 2)
    return wg.reshape(g.groups, -1, w.shape[1])


def grouped_rows(d: np.ndarray, g: Geometry) -> np.ndarray:
    """``(G, Og, N·oh·ow)``: each group's :func:`grad_output_rows`."""
    return grad_output_rows(d, g).reshape(g.groups, -1, g.N * g.out_h * g.out_w)


def gemm_shape(name: str, g: Geometry) -> tuple[int, int, int, int]:
    """``(groups, rows of A, inner dimension, columns of B)`` of a gradient's batched GEMM."""
    n_out = g.N * g.out_h * g.out_w
    return {
        "grad_input": (g.groups, g.N * g.H * g.W, g.Og * g.kH * g.kW, g.Cg),
        "grad_weight": (g.groups, g.Og, n_out, g.Cg * g.kH * g.kW),
        "grad_bias": (1, g.O, n_out, 1),
    }[name]


def gemm_operands(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry, names=GRADIENTS) -> dict:
    """The gradients ``names`` (default all three) as batched GEMMs ``A @ B``, operands laid out
    ``(G, rows, inner)`` and ``(G, inner, cols)``.

    Per group, ``grad_weight = δ_rows @ im2col(x)``, ``grad_input = im2col_transposed(δ) @
    weight_rows``, ``grad_bias = δ_rows @ 1`` (one batch of all ``O`` rows). Each entry of each
    product is exactly the spec's sum (structural zeros, padded reads and non-matching input
    steps, included as zeros).
    """
    n_out = g.N * g.out_h * g.out_w
    layouts = {
        "grad_input": (lambda: _batched_transposed(d, g), lambda: _batched_weight_rows(w, g)),
        "grad_weight": (lambda: grouped_rows(d, g), lambda: _batched_im2col(x, g)),
        "grad_bias": (lambda: grad_output_rows(d, g)[None], lambda: np.ones((1, n_out, 1), dtype=d.dtype)),
    }
    return {name: (fa(), fb()) for name, (fa, fb) in layouts.items() if name in names}


def input_taps(g: Geometry) -> list:
    """The kernel taps ``(di, dj)`` that reach the input, each with the output rows and columns
    that reach it and the input rows and columns they reach: ``(di, dj, (oi, h), (oj, w))``, four
    slices with ``oi·sh + di·dh - ph = h`` (columns likewise)."""
    out = []
    for di in range(g.kH):
        rows = _span(di, g.H, g.out_h, g.sh, g.ph, g.dh)
        if rows is None:
            continue
        for dj in range(g.kW):
            cols = _span(dj, g.W, g.out_w, g.sw, g.pw, g.dw)
            if cols is not None:
                out.append((di, dj, rows, cols))
    return out


def gradient_operand(name: str, b: np.ndarray, g: Geometry) -> np.ndarray:
    """``b`` as :func:`gradient_product` uses it: the weight gradient's batched im2col of the
    input (built once where many products share it), the tensor itself otherwise."""
    return _batched_im2col(b, g) if name == "grad_weight" and b.ndim == 4 else b


def gradient_product(name: str, a: np.ndarray, b: np.ndarray | None, g: Geometry) -> np.ndarray:
    """The gradient ``name``'s sums of products ``Σ a·b`` over the spec's index map, computed
    with float64 GEMMs from the compact tensors, in the gradient's shape (float64).

    ``a`` is δ-shaped; ``b`` is weight-shaped for ``grad_input``, input-shaped (or its
    :func:`gradient_operand`) for ``grad_weight`` and ignored for ``grad_bias`` (its sums are of
    ``a`` alone). Every entry is
    the sum of exactly the spec's non-zero steps, the same terms as :func:`gemm_operands`' GEMM
    — in another order: the input gradient is summed tap by tap (one GEMM per kernel tap over
    the output positions that reach the input, ``Σ_o δ[n, o, oi, oj]·w[o, c, di, dj]``, added
    into the input positions it reaches), which never builds the transposed im2col (``k²·O``
    columns per input position: gigabytes for a 7×7 stem at 224×224) and does each
    multiply-add once. Exact where the operands are integers whose sums stay below 2^53 (the
    exact oracle's digit slices); otherwise a float64 evaluation of the sums in some order (the
    order-free bound inflates it into a sure upper bound, as for any order).
    """
    if name == "grad_bias":
        return a.sum(axis=(0, 2, 3))
    G = g.groups
    if name == "grad_weight":
        return (grouped_rows(a, g) @ gradient_operand(name, b, g)).reshape(g.weight_shape)
    out = np.zeros(g.input_shape)
    wg = b.reshape(G, g.Og, g.Cg, g.kH, g.kW)
    for di, dj, (oi, hs), (oj, ws) in input_taps(g):
        part = a[:, :, oi, oj]  # (N, O, hi, wj)
        n, _, hi, wj = part.shape
        lhs = part.reshape(n, G, g.Og, hi, wj).transpose(1, 0, 3, 4, 2).reshape(G, n * hi * wj, g.Og)
        rhs = wg[:, :, :, di, dj]  # (G, Og, Cg)
        # one output channel per group (depthwise): a single product per entry, no sum to form
        prod = lhs * rhs if g.Og == 1 else lhs @ rhs  # (G, N·hi·wj, Cg)
        out[:, :, hs, ws] += prod.reshape(G, n, hi, wj, g.Cg).transpose(1, 0, 4, 2, 3).reshape(n, g.C, hi, wj)
    return out


def gemm_result_to_gradient(name: str, r: np.ndarray, g: Geometry) -> np.ndarray:
    """Reshape a batched GEMM product of :func:`gemm_operands` into the gradient's shape."""
    if name == "grad_input":
        return r.reshape(g.groups, g.N, g.H, g.W, g.Cg).transpose(1, 0, 4, 2, 3).reshape(g.input_shape)
    return r.reshape(g.shape_of(name))
