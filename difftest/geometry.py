"""Conv2D geometry of the spec (``Spec.Conv2DSpec``) and the im2col layout shared by the engines.

One stride and one padding for both axes, no dilation, no groups, as in TorchLean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidCase


@dataclass(frozen=True)
class Geometry:
    """Shapes of one Conv2D layer: input ``(N, C, H, W)``, weight ``(O, C, kH, kW)``."""

    N: int
    C: int
    H: int
    W: int
    O: int
    kH: int
    kW: int
    stride: int
    padding: int

    def __post_init__(self) -> None:
        for name in ("N", "C", "H", "W", "O", "kH", "kW"):
            if getattr(self, name) < 1:
                raise InvalidCase(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stride < 1:
            raise InvalidCase(f"stride must be >= 1, got {self.stride}")
        if self.padding < 0:
            raise InvalidCase(f"padding must be >= 0, got {self.padding}")
        for k, n, axis in ((self.kH, self.H, "height"), (self.kW, self.W, "width")):
            if k > n + 2 * self.padding:
                raise InvalidCase(
                    f"kernel {axis} {k} exceeds the padded input {axis} {n} + 2*{self.padding}: "
                    "the spec's truncated subtraction would silently give one output row, "
                    "which no framework computes; use a smaller kernel or more padding"
                )

    @property
    def out_h(self) -> int:
        """Mirrors TorchLean ``conv2dOutH``: ``(inH + 2p - kH) div s + 1``."""
        return (self.H + 2 * self.padding - self.kH) // self.stride + 1

    @property
    def out_w(self) -> int:
        """Mirrors TorchLean ``conv2dOutW``."""
        return (self.W + 2 * self.padding - self.kW) // self.stride + 1

    @property
    def macs(self) -> int:
        """Multiply-adds of one gradient's GEMM (input and weight gradients alike)."""
        return self.N * self.C * self.O * self.kH * self.kW * self.out_h * self.out_w

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.O, self.C, self.kH, self.kW)

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

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("N", "C", "H", "W", "O", "kH", "kW", "stride", "padding")} | {
            "out_h": self.out_h,
            "out_w": self.out_w,
        }


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
    p = g.padding
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def window_index(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the padded image read by output ``(i, j)`` and kernel tap ``(di, dj)``.

    Returned arrays broadcast to ``(out_h, out_w, kH, kW)``.
    """
    i = np.arange(g.out_h)[:, None, None, None]
    j = np.arange(g.out_w)[None, :, None, None]
    di = np.arange(g.kH)[None, None, :, None]
    dj = np.arange(g.kW)[None, None, None, :]
    return i * g.stride + di, j * g.stride + dj


def im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """Columns ``[(n, i, j), (c, di, dj)] = x̃[n, c, i·s + di, j·s + dj]`` (zero where padded)."""
    rows, cols = window_index(g)
    xp = pad(x, g)
    # (N, C, oh, ow, kH, kW) -> (N, oh, ow, C, kH, kW)
    patches = xp[:, :, rows, cols].transpose(0, 2, 3, 1, 4, 5)
    return patches.reshape(g.N * g.out_h * g.out_w, g.C * g.kH * g.kW)


def col2im_add(cols: np.ndarray, g: Geometry) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add columns back into ``(N, C, H, W)``.

    Padded positions are dropped. Contributions to one entry are added in ``(di, dj)``
    row-major order, in the dtype of ``cols``.
    """
    p, s = g.padding, g.stride
    patches = cols.reshape(g.N, g.out_h, g.out_w, g.C, g.kH, g.kW).transpose(0, 3, 1, 2, 4, 5)
    out = np.zeros((g.N, g.C, g.H + 2 * p, g.W + 2 * p), dtype=cols.dtype)
    for di in range(g.kH):
        for dj in range(g.kW):
            out[:, :, di : di + s * g.out_h : s, dj : dj + s * g.out_w : s] += patches[..., di, dj]
    return out[:, :, p : p + g.H, p : p + g.W]


def im2col_transposed(d: np.ndarray, g: Geometry) -> np.ndarray:
    """Rows ``[(n, h, w), (di, dj, o)] = δ[n, o, oi, oj]`` where ``oi·s + di = h + p`` and
    ``oj·s + dj = w + p`` (exact zero where no such output position exists).

    With it the input gradient is one GEMM against :func:`weight_rows`: entry ``(n, c, h, w)``
    sums exactly the non-zero steps of TorchLean's ``conv2dInputDerivSpec``. Built tap by tap:
    for each ``(di, dj)`` the valid ``(h, w)`` form a strided slice, filled from δ at once
    (contiguous runs over ``o``, the innermost column index).
    """
    out = np.zeros((g.N, g.H, g.W, g.kH, g.kW, g.O), dtype=d.dtype)
    dt = d.transpose(0, 2, 3, 1)  # (N, out_h, out_w, O)

    def span(k: int, n_in: int, n_out: int) -> tuple[slice, slice] | None:
        """Output positions ``o`` with ``0 <= o·s - p + k < n_in``, and the input slice they reach."""
        lo = max(0, -(-(g.padding - k) // g.stride))
        hi = min(n_out - 1, (n_in - 1 + g.padding - k) // g.stride)
        if hi < lo:
            return None
        start = lo * g.stride - g.padding + k
        return slice(lo, hi + 1), slice(start, start + (hi - lo) * g.stride + 1, g.stride)

    for di in range(g.kH):
        rows = span(di, g.H, g.out_h)
        if rows is None:
            continue
        for dj in range(g.kW):
            cols = span(dj, g.W, g.out_w)
            if cols is not None:
                out[:, rows[1], cols[1], di, dj, :] = dt[:, rows[0], cols[0], :]
    return out.reshape(g.N * g.H * g.W, g.kH * g.kW * g.O)


def weight_rows(w: np.ndarray, g: Geometry) -> np.ndarray:
    """The weight as a ``(kH·kW·O, C)`` matrix, matching :func:`im2col_transposed`'s columns."""
    return w.transpose(2, 3, 0, 1).reshape(g.kH * g.kW * g.O, g.C)


def grad_output_rows(d: np.ndarray, g: Geometry) -> np.ndarray:
    """δ as an ``(O, N·out_h·out_w)`` matrix, columns in the ``(n, i, j)`` fold order."""
    return d.transpose(1, 0, 2, 3).reshape(g.O, g.N * g.out_h * g.out_w)


def gemm_layouts(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry) -> dict:
    """The three gradients as GEMMs ``A @ B``, each operand as ``(source, layout)``: the
    operand is ``layout(source)``, a gather of the source's entries and exact zeros (see
    :func:`gemm_operands`). An entrywise map of the source — exact digit slices, absolute
    values — commutes with the layout, so it can be applied to the compact source."""
    drows = lambda t: grad_output_rows(t, g)  # noqa: E731
    return {
        "grad_input": ((d, lambda t: im2col_transposed(t, g)), (w, lambda t: weight_rows(t, g))),
        "grad_weight": ((d, drows), (x, lambda t: im2col(t, g))),
        "grad_bias": ((d, drows), (np.ones((g.N * g.out_h * g.out_w, 1), dtype=d.dtype), lambda t: t)),
    }


def gemm_shape(name: str, g: Geometry) -> tuple[int, int, int]:
    """``(rows of A, inner dimension, columns of B)`` of a gradient's GEMM."""
    n_out = g.N * g.out_h * g.out_w
    return {
        "grad_input": (g.N * g.H * g.W, g.O * g.kH * g.kW, g.C),
        "grad_weight": (g.O, n_out, g.C * g.kH * g.kW),
        "grad_bias": (g.O, n_out, 1),
    }[name]


def gemm_operands(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry, names=GRADIENTS) -> dict:
    """The gradients ``names`` (default all three) as GEMMs ``A @ B``, operands laid out.

    ``grad_weight = δ_rows @ im2col(x)``, ``grad_input = im2col_transposed(δ) @ weight_rows``,
    ``grad_bias = δ_rows @ 1``. Each entry of each product is exactly the spec's sum
    (structural zeros, padded reads and non-matching input steps, included as zeros).
    """
    layouts = gemm_layouts(x, w, d, g)
    return {name: (fa(a), fb(b)) for name, ((a, fa), (b, fb)) in layouts.items() if name in names}


Blocks = "list[tuple[np.ndarray, np.ndarray]] | None"


def gemm_blocks(name: str, g: Geometry) -> Blocks:
    """Row and column classes of a gradient's GEMM outside of which ``A`` is structurally zero.

    With stride ``s > 1``, input row ``h`` is reached only by taps ``di ≡ h + p (mod s)``: the
    rows of class ``(h mod s, w mod s)`` need only the columns ``(di, dj, o)`` of that class
    (the sub-pixel decomposition of the transposed convolution), ``s²`` times less work.
    ``None``: one dense block.
    """
    if name != "grad_input" or g.stride == 1:
        return None
    s, p = g.stride, g.padding
    rows_of = np.arange(g.N * g.H * g.W).reshape(g.N, g.H, g.W)
    taps = (np.arange(g.kH)[:, None, None] * g.kW + np.arange(g.kW)[None, :, None]) * g.O + np.arange(g.O)[None, None, :]
    blocks = []
    for r in range(s):
        for q in range(s):
            rows = rows_of[:, r::s, q::s].ravel()
            if rows.size == 0:
                continue
            di = np.array([k for k in range(g.kH) if (r + p - k) % s == 0], dtype=np.int64)
            dj = np.array([k for k in range(g.kW) if (q + p - k) % s == 0], dtype=np.int64)
            blocks.append((rows, taps[np.ix_(di, dj)].ravel()))
    return blocks


def blocked_matmul(a: np.ndarray, b: np.ndarray, blocks: Blocks, dtype=None) -> np.ndarray:
    """``a @ b`` computing only the blocks of :func:`gemm_blocks` (the rest of ``a`` is zero there)."""
    if blocks is None:
        return a @ b
    out = np.zeros((a.shape[0], b.shape[1]), dtype=dtype or np.result_type(a, b))
    for rows, cols in blocks:
        if cols.size:
            out[rows] = a[np.ix_(rows, cols)] @ b[cols]
    return out


def gemm_result_to_gradient(name: str, r: np.ndarray, g: Geometry) -> np.ndarray:
    """Reshape a GEMM product of :func:`gemm_operands` into the gradient's shape."""
    if name == "grad_input":
        return r.reshape(g.N, g.H, g.W, g.C).transpose(0, 3, 1, 2)
    return r.reshape(g.shape_of(name))
