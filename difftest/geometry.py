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
    """Rows ``[(n, h, w), (o, di, dj)] = δ[n, o, oi, oj]`` where ``oi·s + di = h + p`` and
    ``oj·s + dj = w + p`` (exact zero where no such output position exists).

    With it the input gradient is one GEMM against :func:`weight_rows`: entry ``(n, c, h, w)``
    sums exactly the non-zero steps of TorchLean's ``conv2dInputDerivSpec``.
    """
    def taps(n_in: int, n_out: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(n_in)[:, None] + g.padding - np.arange(k)[None, :]  # (in, k): oi * s
        valid = (t >= 0) & (t % g.stride == 0) & (t // g.stride < n_out)
        return np.where(valid, t // g.stride, 0), valid

    oi, vi = taps(g.H, g.out_h, g.kH)  # (H, kH)
    oj, vj = taps(g.W, g.out_w, g.kW)  # (W, kW)
    rows = oi[:, None, :, None]  # (H, 1, kH, 1)
    cols = oj[None, :, None, :]  # (1, W, 1, kW)
    valid = vi[:, None, :, None] & vj[None, :, None, :]  # (H, W, kH, kW)
    gathered = d[:, :, rows, cols]  # (N, O, H, W, kH, kW)
    gathered = np.where(valid, gathered, np.zeros((), dtype=d.dtype))
    return gathered.transpose(0, 2, 3, 1, 4, 5).reshape(g.N * g.H * g.W, g.O * g.kH * g.kW)


def weight_rows(w: np.ndarray, g: Geometry) -> np.ndarray:
    """The weight as a ``(O·kH·kW, C)`` matrix, matching :func:`im2col_transposed`'s columns."""
    return w.transpose(0, 2, 3, 1).reshape(g.O * g.kH * g.kW, g.C)


def grad_output_rows(d: np.ndarray, g: Geometry) -> np.ndarray:
    """δ as an ``(O, N·out_h·out_w)`` matrix, columns in the ``(n, i, j)`` fold order."""
    return d.transpose(1, 0, 2, 3).reshape(g.O, g.N * g.out_h * g.out_w)


def gemm_operands(x: np.ndarray, w: np.ndarray, d: np.ndarray, g: Geometry) -> dict:
    """The three gradients as GEMMs ``A @ B`` and how to shape the product back.

    ``grad_weight = δ_rows @ im2col(x)``, ``grad_input = im2col_transposed(δ) @ weight_rows``,
    ``grad_bias = δ_rows @ 1``. Each entry of each product is exactly the spec's sum
    (structural zeros, padded reads and non-matching input steps, included as zeros).
    """
    drows = grad_output_rows(d, g)
    return {
        "grad_input": (im2col_transposed(d, g), weight_rows(w, g)),
        "grad_weight": (drows, im2col(x, g)),
        "grad_bias": (drows, np.ones((drows.shape[1], 1), dtype=d.dtype)),
    }


Blocks = "list[tuple[np.ndarray, np.ndarray]] | None"


def gemm_blocks(name: str, g: Geometry) -> Blocks:
    """Row and column classes of a gradient's GEMM outside of which ``A`` is structurally zero.

    With stride ``s > 1``, input row ``h`` is reached only by taps ``di ≡ h + p (mod s)``: the
    rows of class ``(h mod s, w mod s)`` need only the columns ``(o, di, dj)`` of that class
    (the sub-pixel decomposition of the transposed convolution), ``s²`` times less work.
    ``None``: one dense block.
    """
    if name != "grad_input" or g.stride == 1:
        return None
    s, p = g.stride, g.padding
    rows_of = np.arange(g.N * g.H * g.W).reshape(g.N, g.H, g.W)
    taps = np.arange(g.O)[:, None, None] * (g.kH * g.kW) + np.arange(g.kH)[None, :, None] * g.kW + np.arange(g.kW)[None, None, :]
    blocks = []
    for r in range(s):
        for q in range(s):
            rows = rows_of[:, r::s, q::s].ravel()
            if rows.size == 0:
                continue
            di = np.array([k for k in range(g.kH) if (r + p - k) % s == 0], dtype=np.int64)
            dj = np.array([k for k in range(g.kW) if (q + p - k) % s == 0], dtype=np.int64)
            blocks.append((rows, taps[:, di][:, :, dj].ravel()))
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
