"""The GEMM layouts the engines share: each gradient entry of a :class:`~difftest.geometry.Geometry`
as a sum over the spec's non-zero steps.

:func:`gradient_product` evaluates those sums from the compact tensors with float64 GEMMs batched
over groups (one ``numpy.matmul`` over the group axis; the input gradient one GEMM per kernel tap,
added into the input positions the tap reaches), so a depthwise layer costs its own multiply-adds
and nothing is laid out larger than the tensors; the exact oracle and the order-free bound use
it. :func:`gemm_operands` lays the same sums out as dense batched GEMMs ``(G, rows, inner) @ (G,
inner, cols)``, each entry's terms along the inner dimension in the spec's fold order: the
emulations fold along it. :func:`im2col` and its relatives are the layouts of one group.
"""

from __future__ import annotations

import numpy as np

from .geometry import GRADIENTS, Geometry


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
