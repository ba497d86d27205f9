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

from ..values.geometry import GRADIENTS, Geometry


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
    if name == "grad_weight":
        return (grouped_rows(a, g) @ gradient_operand(name, b, g)).reshape(g.weight_shape)
    # channels last, laid out once: each tap's rows are a slice whose channels are contiguous, and
    # each product adds into the input positions it reaches without a transposed copy
    a_last = np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # (N, oh, ow, O)
    return np.ascontiguousarray(input_product_last(a_last, b, g).transpose(0, 3, 1, 2))


def input_product_last(a_last: np.ndarray, b: np.ndarray, g: Geometry) -> np.ndarray:
    """:func:`gradient_product` of ``grad_input`` channels last: from δ as ``(N, oh, ow, O)`` to
    the sums as ``(N, H, W, C)`` (where many products share one δ, it is laid out once)."""
    G = g.groups
    out = np.zeros((g.N, g.H, g.W, g.C), dtype=np.result_type(a_last, b, np.float64))
    wg = b.reshape(G, g.Og, g.Cg, g.kH, g.kW)
    for di, dj, (oi, hs), (oj, ws) in input_taps(g):
        part = a_last[:, oi, oj, :]  # (N, hi, wj, O)
        n, hi, wj, _ = part.shape
        rhs = wg[:, :, :, di, dj]  # (G, Og, Cg)
        if G == 1:
            prod = part.reshape(n * hi * wj, g.O) @ rhs[0]  # (N·hi·wj, C)
        else:
            lhs = part.reshape(n * hi * wj, G, g.Og).transpose(1, 0, 2)  # (G, N·hi·wj, Og)
            # one output channel per group (depthwise): a single product per entry, no sum to form
            prod = (lhs * rhs if g.Og == 1 else lhs @ rhs).transpose(1, 0, 2)  # (N·hi·wj, G, Cg)
        out[:, hs, ws, :] += prod.reshape(n, hi, wj, g.C)
    return out


def gemm_result_to_gradient(name: str, r: np.ndarray, g: Geometry) -> np.ndarray:
    """Reshape a batched GEMM product of :func:`gemm_operands` into the gradient's shape."""
    if name == "grad_input":
        return r.reshape(g.groups, g.N, g.H, g.W, g.Cg).transpose(1, 0, 4, 2, 3).reshape(g.input_shape)
    return r.reshape(g.shape_of(name))


# --- the sums of chosen entries only (a sampled check: difftest.sampling) --------------------------

#: Elements one gathered block of :func:`entry_product` may hold (its operands are this large).
ENTRY_BLOCK = 1 << 20


def entry_operand(name: str, b: np.ndarray, g: Geometry) -> np.ndarray:
    """``b`` as :func:`entry_product` uses it: the weight gradient's input padded once (where
    many products share it), the tensor itself otherwise."""
    return pad(b, g) if name == "grad_weight" and b.shape == g.input_shape else b


def entry_terms(name: str, a: np.ndarray, b: np.ndarray | None, g: Geometry, index: np.ndarray,
                block: int = ENTRY_BLOCK):
    """The terms of the entries ``index`` (flat, of the gradient's shape) of gradient ``name``, in
    blocks: yields ``(rows, ta, tb)`` with ``ta``, ``tb`` of shape ``(len(rows), steps)`` such that
    entry ``index[rows[e]]`` is ``Σ_k ta[e, k]·tb[e, k]`` over exactly the spec's terms, in the
    spec's fold order (zeros where a padded or non-matching step reads nothing); ``tb`` is None
    for ``grad_bias`` (sums of ``a`` alone).

    * ``grad_bias[o]``: ``δ[n, o, i, j]`` over ``(n, i, j)``;
    * ``grad_weight[o, c, di, dj]``: ``δ[n, o, i, j]·x̃[n, c', i·sh + di·dh, j·sw + dj·dw]`` over
      ``(n, i, j)``, ``c'`` the input channel of ``o``'s group, ``b`` the padded input
      (:func:`entry_operand`);
    * ``grad_input[n, c, h, w]``: ``δ[n, o, oi, oj]·w[o, c mod C/G, di, dj]`` over the group's
      ``o`` ascending, then the slots ``oi``, ``oj`` of :func:`input_slots` ascending.

    A block holds at most ``block`` terms per operand (one entry at least).
    """
    index = np.asarray(index, dtype=np.int64)
    if name == "grad_bias":
        steps = g.N * g.out_h * g.out_w
        rows_d = a.transpose(1, 0, 2, 3).reshape(g.O, steps)
        for rows in _blocks(index.size, steps, block):
            yield rows, rows_d[index[rows]], None
        return
    if name == "grad_weight":
        o, c, di, dj = np.unravel_index(index, g.weight_shape)
        cin = (o // g.Og) * g.Cg + c
        steps = g.N * g.out_h * g.out_w
        i = np.arange(g.out_h) * g.sh
        j = np.arange(g.out_w) * g.sw
        for rows in _blocks(index.size, steps, block):
            r = (di[rows] * g.dh)[:, None, None] + i[None, :, None]
            q = (dj[rows] * g.dw)[:, None, None] + j[None, None, :]
            tb = b[:, cin[rows][:, None, None], r, q]  # (N, E, oh, ow)
            ta = a[:, o[rows]]  # (N, E, oh, ow)
            yield rows, _entries_first(ta), _entries_first(tb)
        return
    n, c, h, w = np.unravel_index(index, g.input_shape)
    group, local = np.divmod(c, g.Cg)
    oi, di, vh = input_slots(g.H, g.out_h, g.kH, g.sh, g.ph, g.dh)
    oj, dj, vw = input_slots(g.W, g.out_w, g.kW, g.sw, g.pw, g.dw)
    A, B = oi.shape[0], oj.shape[0]
    steps = g.Og * A * B
    ol = np.arange(g.Og)
    for rows in _blocks(index.size, steps, block):
        hh, ww = h[rows], w[rows]
        o = (group[rows] * g.Og)[:, None, None, None] + ol[None, :, None, None]  # (E, Og, 1, 1)
        r = oi[:, hh].T[:, None, :, None]  # (E, 1, A, 1)
        q = oj[:, ww].T[:, None, None, :]  # (E, 1, 1, B)
        valid = (vh[:, hh].T[:, None, :, None] & vw[:, ww].T[:, None, None, :])
        ta = np.where(valid, a[n[rows][:, None, None, None], o, r, q], 0.0)
        tb = np.where(valid, b[o, local[rows][:, None, None, None], di[:, hh].T[:, None, :, None],
                               dj[:, ww].T[:, None, None, :]], 0.0)
        yield rows, ta.reshape(rows.size, steps), tb.reshape(rows.size, steps)


def _entries_first(t: np.ndarray) -> np.ndarray:
    """``(N, E, oh, ow)`` -> ``(E, N·oh·ow)``: each entry's terms in ``(n, i, j)`` order."""
    return np.ascontiguousarray(t.transpose(1, 0, 2, 3)).reshape(t.shape[1], -1)


def _blocks(count: int, steps: int, block: int):
    """Row ranges of at most ``block`` elements of ``steps`` terms each (one row at least)."""
    per = max(1, block // max(1, steps))
    for start in range(0, count, per):
        yield np.arange(start, min(count, start + per))


def entry_product(name: str, a: np.ndarray, b: np.ndarray | None, g: Geometry, index: np.ndarray) -> np.ndarray:
    """The sums ``Σ a·b`` of the entries ``index`` of gradient ``name`` (:func:`entry_terms`), in
    float64 in some order: exact where the operands are integers whose sums stay below 2^53
    (the exact oracle's digit slices), one float64 evaluation otherwise."""
    out = np.empty(np.asarray(index).size)
    for rows, ta, tb in entry_terms(name, a, b, g, index):
        out[rows] = ta.sum(axis=1) if tb is None else np.einsum("ek,ek->e", ta, tb)
    return out


def input_slots(n_in: int, n_out: int, k: int, s: int, p: int, dil: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each input row ``h``, the output rows ``oi`` (ascending) with ``oi·s + di·dil = h + p``
    for a tap ``0 <= di < k`` (at most one tap per ``oi``).

    Returns ``(oi, di, valid)`` shaped ``(slots, n_in)``.
    """
    h = np.arange(n_in)
    reach = (k - 1) * dil
    lo = np.maximum(0, -((reach - h - p) // s))  # ceil((h + p - reach) / s), at least 0
    hi = np.minimum(n_out - 1, (h + p) // s)
    count = int(max(0, np.max(hi - lo + 1)))
    oi = lo[None, :] + np.arange(count)[:, None]
    off = h[None, :] + p - oi * s  # di·dil where valid
    valid = (oi <= hi[None, :]) & (off % dil == 0)
    oi = np.where(valid, oi, 0)
    di = np.where(valid, off // dil, 0)
    return oi, di, valid
