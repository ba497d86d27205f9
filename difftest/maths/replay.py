"""Vectorised replay of TorchLean's folds: the NF runtime gradients and the ``torchlean`` bounds.

The same fold as :mod:`difftest.lean` (``foldAddState`` with ``addEps``/``mulEps``), run
across all entries of a gradient at once, the loop running over the fold axis:

* NF values with one correct rounding per operation (:func:`~difftest.fparith.nf_add`,
  :func:`~difftest.fparith.nf_mul`);
* ``ulp`` of the exact sums and products (exact ``mag``);
* the bound accumulated with upward rounding, so it is never below the real bound and above
  it by at most a relative ``2^-52`` per operation (plus, for binary64 only, ``2^-1075``
  terms rounded up to ``2^-1074``).

For the input gradient only the contributing steps are visited; each run of ``k`` zero steps
adds ``k · ulp(acc)/2`` in closed form, exactly as the ``k`` single steps would.
"""

from __future__ import annotations

import numpy as np

from ..values.case import RuntimeInputs
from ..errors import UnsupportedFormat
from ..values.formats import Format
from ..values.fparith import add_up, half_ulp_of, half_ulp_of_product, half_ulp_of_sum, mul_up, nf_add, nf_mul
from ..values.geometry import GRADIENTS, Geometry
from .layouts import entry_operand, entry_terms, grad_output_rows, grouped_rows, im2col, input_slots


class Fold:
    """The state of ``foldAddState`` for many entries at once: runtime ``acc`` and bound ``e``."""

    def __init__(self, fmt: Format, shape: tuple[int, ...]):
        self.fmt = fmt
        self.acc = np.zeros(shape)
        self.e = np.zeros(shape)

    def step(self, t: np.ndarray, e_t: np.ndarray | float, where: np.ndarray | None = None) -> None:
        """One ``addEps`` step: ``e ← e + e_t + ulp(acc + t)/2``, ``acc ← acc ⊕ t``."""
        e = add_up(add_up(self.e, np.broadcast_to(e_t, self.e.shape)), half_ulp_of_sum(self.fmt, self.acc, t))
        acc = nf_add(self.fmt, self.acc, t)
        if where is None:
            self.e, self.acc = e, acc
        else:
            self.e = np.where(where, e, self.e)
            self.acc = np.where(where, acc, self.acc)

    def product_step(self, x: np.ndarray, y: np.ndarray, e_x: float, e_y: float, where: np.ndarray | None = None) -> None:
        """One step of a fold of products: ``x ⊗ y`` with its ``mulEps`` (every numpy fold of
        products takes it, the sampled entry folds too, as :mod:`difftest.kernels` does)."""
        self.step(nf_mul(self.fmt, x, y), mul_eps(self.fmt, x, y, e_x, e_y), where=where)

    def zero_steps(self, k: np.ndarray) -> None:
        """``k`` steps of exact zero terms with zero error: ``e ← e + k·ulp(acc)/2``.

        ``k · 2^q`` is exact in float64 (``k < 2^53``).
        """
        self.e = add_up(self.e, np.asarray(k, dtype=np.float64) * half_ulp_of(self.fmt, self.acc))


def mul_eps(fmt: Format, x: np.ndarray, y: np.ndarray, e_x: float, e_y: float) -> np.ndarray:
    """Mirrors TorchLean ``mulEps`` (rounded up): ``(|x| + e_x)·e_y + (|y| + e_y)·e_x + ulp(x·y)/2``."""
    x, y = np.broadcast_arrays(x, y)
    h = half_ulp_of_product(fmt, x, y)
    if e_x == 0 and e_y == 0:
        return h
    ex, ey = np.float64(e_x), np.float64(e_y)
    cross = add_up(mul_up(add_up(np.abs(x), ex), ey), mul_up(add_up(np.abs(y), ey), ex))
    return add_up(cross, h)


def bias_replay(rt: RuntimeInputs, g: Geometry) -> Fold:
    """``conv2dBiasPointBound`` for every output channel; steps over ``(n, i, j)`` (groups
    change nothing here)."""
    d = grad_output_rows(rt.grad_output, g)
    fold = Fold(rt.format, (g.O,))
    for k in range(d.shape[1]):
        fold.step(d[:, k], rt.eps_grad_output)
    return fold


def kernel_replay(rt: RuntimeInputs, g: Geometry) -> Fold:
    """``conv2dKernelPointBound`` for every ``(o, c, di, dj)``; steps over ``(n, i, j)``. Output
    channel ``o`` of group ``G_o`` meets the input channels of that group only."""
    fmt = rt.format
    d = grouped_rows(rt.grad_output, g)  # (G, Og, K)
    cols = im2col(rt.input, g)  # (K, C·kH·kW), padded reads are exact zeros
    cols = cols.reshape(cols.shape[0], g.groups, -1)  # (K, G, Cg·kH·kW)
    fold = Fold(fmt, (g.groups, g.Og, cols.shape[2]))
    for k in range(d.shape[2]):
        x = cols[k][:, None, :]
        dv = d[:, :, k][:, :, None]
        fold.product_step(x, dv, rt.eps_input, rt.eps_grad_output)
    return fold


def input_replay(rt: RuntimeInputs, g: Geometry) -> Fold:
    """``conv2dInputPointBound`` for every ``(n, c, h, w)``.

    The Lean fold runs over all ``(o, oi, oj, di, dj)`` of the entry's group (``O/G`` output
    channels). For a fixed entry the contributing tuples, in that lexicographic order, are ``o``
    ascending, then ``oi`` ascending, then ``oj`` ascending (``di``, ``dj`` follow: with
    dilation at most one tap reaches a given input row from a given output row); the others are
    zero steps, added in runs. All groups fold at once (state ``(N, G, C/G, H, W)``).
    """
    fmt = rt.format
    G, Og, Cg = g.groups, g.Og, g.Cg
    d = rt.grad_output.reshape(g.N, G, Og, g.out_h, g.out_w)
    w = rt.weight.reshape(G, Og, Cg, g.kH, g.kW)
    oi, di, vh = input_slots(g.H, g.out_h, g.kH, g.sh, g.ph, g.dh)
    oj, dj, vw = input_slots(g.W, g.out_w, g.kW, g.sw, g.pw, g.dw)
    total = Og * g.out_h * g.out_w * g.kH * g.kW
    fold = Fold(fmt, (g.N, G, Cg, g.H, g.W))
    last = np.full((g.H, g.W), -1, dtype=np.int64)  # index of the last step taken, per (h, w)
    for o in range(Og):
        for a in range(oi.shape[0]):
            for b in range(oj.shape[0]):
                valid = vh[a][:, None] & vw[b][None, :]  # (H, W)
                if not valid.any():
                    continue
                r, q = oi[a][:, None], oj[b][None, :]
                kr, kq = di[a][:, None], dj[b][None, :]
                idx = (((o * g.out_h + r) * g.out_w + q) * g.kH + kr) * g.kW + kq
                fold.zero_steps(np.where(valid, idx - last - 1, 0))
                dv = d[:, :, o][:, :, r, q][:, :, None, :, :]  # (N, G, 1, H, W)
                wv = w[:, o][:, :, kr, kq][None]  # (1, G, Cg, H, W)
                fold.product_step(dv, wv, rt.eps_grad_output, rt.eps_weight, where=valid)
                last = np.where(valid, idx, last)
    fold.zero_steps(total - 1 - last)
    return fold


def compiled(fmt: Format) -> bool:
    """Whether the compiled folds of :mod:`difftest.kernels` handle ``fmt`` (precision <= 26,
    products normal in float64); binary64 runs the numpy folds of this module."""
    return fmt.vectorised and not fmt.is_binary64 and fmt.emin >= -511


def _operand(a: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous float64 view (a copy where needed) of an operand of the compiled
    folds: one array type whatever the caller holds, so numba compiles each fold once (a writable
    and a read-only argument are two specialisations, each compiled on a fresh machine)."""
    v = np.ascontiguousarray(a, dtype=np.float64).view()
    v.setflags(write=False)
    return v


#: :func:`difftest.kernels._ieee32`'s probe of gradual underflow, ``[2^-149, 2^-70]`` (passed as an
#: argument: no compiler folds it into a constant).
_PROBE = np.array([2.0**-149, 2.0**-70])


def _fold(kernel, head: tuple, fmt: Format, tail: tuple, acc: np.ndarray, e: np.ndarray) -> None:
    """Run the compiled fold ``kernel(*head, p, emin, fast32, probe, *tail, acc, e)``. binary32
    folds first on the hardware's binary32 arithmetic (about twice as fast, the same values while
    finite); where that overflowed somewhere (the NF model has no overflow) the gradient is folded
    again the emulated way."""
    fast = fmt.prec == 24 and fmt.emin == -149
    kernel(*head, int(fmt.prec), int(fmt.emin), fast, _PROBE, *tail, acc, e)
    if fast and not np.isfinite(acc).all():
        kernel(*head, int(fmt.prec), int(fmt.emin), False, _PROBE, *tail, acc, e)


def _compiled_input(rt: RuntimeInputs, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    from . import kernels

    # channels last: the compiled loop runs over a group's channels; 2 or 3 of them are padded to 4
    # with zero weights (entries of their own, dropped after), which the loop then takes as one
    # vector: the stem's 3 input channels fold in half the time
    cg = 4 if g.Cg in (2, 3) else g.Cg
    wt = rt.weight.reshape(g.groups, g.Og, g.Cg, g.kH, g.kW).transpose(0, 1, 3, 4, 2)  # (G, Og, kH, kW, Cg)
    if cg != g.Cg:
        wt = np.concatenate([wt, np.zeros(wt.shape[:-1] + (cg - g.Cg,))], axis=-1)
    last = (g.N, g.H, g.W, g.groups * cg)
    acc, e = np.empty(last), np.empty(last)
    oi, di, vh = input_slots(g.H, g.out_h, g.kH, g.sh, g.ph, g.dh)
    oj, dj, vw = input_slots(g.W, g.out_w, g.kW, g.sw, g.pw, g.dw)
    _fold(kernels.input_fold, (_operand(rt.grad_output), _operand(wt.reshape(g.O, g.kH, g.kW, cg)),
                               oi, di, vh, oj, dj, vw), rt.format,
          (float(rt.eps_weight), float(rt.eps_grad_output)), acc, e)
    e = kernels.inflate(e, g.Og * oi.shape[0] * oj.shape[0] + 1)
    kept = lambda v: np.ascontiguousarray(  # noqa: E731 - (N, H, W, G, cg) -> the real channels, (N, C, H, W)
        v.reshape(g.N, g.H, g.W, g.groups, cg)[..., :g.Cg].reshape(g.N, g.H, g.W, g.C).transpose(0, 3, 1, 2))
    return kept(acc), kept(e)


def _compiled_kernel(rt: RuntimeInputs, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    from . import kernels

    d = _operand(grad_output_rows(rt.grad_output, g))
    cols = _operand(im2col(rt.input, g))
    acc, e = np.empty((g.O, g.Cg * g.kH * g.kW)), np.empty((g.O, g.Cg * g.kH * g.kW))
    _fold(kernels.kernel_fold, (cols, d), rt.format, (float(rt.eps_input), float(rt.eps_grad_output)), acc, e)
    return acc.reshape(g.weight_shape), kernels.inflate(e, d.shape[1]).reshape(g.weight_shape)


def _compiled_bias(rt: RuntimeInputs, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    from . import kernels

    d = _operand(grad_output_rows(rt.grad_output, g))
    acc, e = np.empty(g.O), np.empty(g.O)
    _fold(kernels.bias_fold, (d,), rt.format, (float(rt.eps_grad_output),), acc, e)
    return acc, kernels.inflate(e, d.shape[1])


_COMPILED = {"grad_input": _compiled_input, "grad_weight": _compiled_kernel, "grad_bias": _compiled_bias}


def compiled_replay(rt: RuntimeInputs, g: Geometry, gradients=GRADIENTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The folds of ``gradients`` (default all three) with :mod:`difftest.kernels` (same results
    as the numpy folds)."""
    return {name: _COMPILED[name](rt, g) for name in gradients}


#: The last few replays, most recent last: ``(format, eps and geometry, copies of the three
#: operands, {gradient: (value, bound)})``.
_CACHE: list = []


def _cached(rt: RuntimeInputs, g: Geometry) -> dict:
    """The cache entry of these runtime values (made empty where none): the same format, eps and
    geometry, and operands bit for bit equal to its copies (a caller may write into its arrays
    afterwards; the copies do not change). A comparison pass, not a hash of every byte."""
    meta = (rt.format, rt.eps_input, rt.eps_weight, rt.eps_grad_output, g)
    bits = [np.ascontiguousarray(a, dtype=np.float64) for a in (rt.input, rt.weight, rt.grad_output)]
    for k, (m, kept, done) in enumerate(_CACHE):
        if m == meta and all(a.shape == c.shape and np.array_equal(a.view(np.int64), c.view(np.int64))
                             for a, c in zip(bits, kept)):
            _CACHE.append(_CACHE.pop(k))
            return done
    _CACHE.append((meta, [a.copy() for a in bits], {}))
    del _CACHE[:-4]
    return _CACHE[-1][2]


def replay(rt: RuntimeInputs, g: Geometry, gradients=GRADIENTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """NF runtime gradients and torchlean bound tensors: ``{gradient: (nf_value, bound)}`` for
    each of ``gradients`` (default all three; each fold is independent of the others, so a
    subset is computed alone and equals the full replay's).

    ``conv2d*BoundTensor`` is the absolute value of the point bound; point bounds are sums
    of non-negative terms here, so it is the bound itself. Formats of precision <= 26 run the
    compiled folds; binary64 the numpy folds below. The last few results are kept (the model
    and an ``nf-*`` backend ask for the same replay of a case).
    """
    if not rt.format.vectorised:
        raise UnsupportedFormat(f"the vectorised replay cannot emulate {rt.format.name}; use difftest.lean")
    done = _cached(rt, g)
    missing = [name for name in gradients if name not in done]
    if missing:
        engine = compiled_replay if compiled(rt.format) else numpy_replay
        for name, (value, bound) in engine(rt, g, missing).items():
            value.setflags(write=False)
            bound.setflags(write=False)
            done[name] = (value, bound)
    return {name: done[name] for name in gradients}


_NUMPY = {"grad_input": input_replay, "grad_weight": kernel_replay, "grad_bias": bias_replay}


def numpy_replay(rt: RuntimeInputs, g: Geometry, gradients=GRADIENTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The folds of ``gradients`` (default all three) with numpy, vectorised across entries
    (any vectorised format)."""
    out = {}
    for name in gradients:
        fold = _NUMPY[name](rt, g)
        out[name] = (fold.acc.reshape(g.shape_of(name)), fold.e.reshape(g.shape_of(name)))
    return out


# --- chosen entries only (a sampled check: difftest.sampling) -------------------------------------

#: Elements one block of the numpy entry folds may gather (their Python loop runs once per step
#: and block: larger blocks than the compiled folds take).
NUMPY_ENTRY_BLOCK = 1 << 25


def replay_entries(rt: RuntimeInputs, g: Geometry, name: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NF values and torchlean bounds of the entries ``index`` (flat, of the gradient's shape) of
    gradient ``name``: for each entry, the same fold as :func:`replay` runs for it, so the values
    are the full replay's at those entries, bit for bit; each entry costs its own steps only."""
    if not rt.format.vectorised:
        raise UnsupportedFormat(f"the vectorised replay cannot emulate {rt.format.name}; use difftest.lean")
    index = np.asarray(index, dtype=np.int64)
    if compiled(rt.format):
        return _COMPILED_ENTRIES[name](rt, g, index)
    return _numpy_entries(rt, g, name, index)


def _compiled_pairs(rt: RuntimeInputs, g: Geometry, name: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from . import kernels

    fmt = rt.format
    acc, e = np.empty(index.size), np.empty(index.size)
    steps = g.N * g.out_h * g.out_w
    b = entry_operand(name, rt.input, g) if name == "grad_weight" else None
    for rows, ta, tb in entry_terms(name, rt.grad_output, b, g, index):
        a_out, e_out = np.empty(rows.size), np.empty(rows.size)
        if tb is None:
            _fold(kernels.bias_fold, (_operand(ta),), fmt, (float(rt.eps_grad_output),), a_out, e_out)
        else:
            _fold(kernels.pair_fold, (_operand(ta), _operand(tb)), fmt, (float(rt.eps_input), float(rt.eps_grad_output)),
                  a_out, e_out)
        acc[rows], e[rows] = a_out, e_out
    return acc, kernels.inflate(e, steps)


def _compiled_input_entries(rt: RuntimeInputs, g: Geometry, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from . import kernels

    n, c, h, w = (np.ascontiguousarray(v) for v in np.unravel_index(index, g.input_shape))
    oi, di, vh = input_slots(g.H, g.out_h, g.kH, g.sh, g.ph, g.dh)
    oj, dj, vw = input_slots(g.W, g.out_w, g.kW, g.sw, g.pw, g.dw)
    acc, e = np.empty(index.size), np.empty(index.size)
    _fold(kernels.input_entries_fold, (_operand(rt.grad_output), _operand(rt.weight.transpose(0, 2, 3, 1)), n, c, h, w,
                                       int(g.groups), oi, di, vh, oj, dj, vw), rt.format,
          (float(rt.eps_weight), float(rt.eps_grad_output)), acc, e)
    return acc, kernels.inflate(e, g.Og * oi.shape[0] * oj.shape[0] + 1)


_COMPILED_ENTRIES = {
    "grad_input": _compiled_input_entries,
    "grad_weight": lambda rt, g, index: _compiled_pairs(rt, g, "grad_weight", index),
    "grad_bias": lambda rt, g, index: _compiled_pairs(rt, g, "grad_bias", index),
}


def _numpy_entries(rt: RuntimeInputs, g: Geometry, name: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy folds of :func:`bias_replay`, :func:`kernel_replay` and :func:`input_replay`,
    vectorised across the chosen entries instead of all."""

    if name == "grad_input":
        fold = _input_entries_fold(rt, g, index)
        return fold.acc, fold.e
    fmt = rt.format
    acc, e = np.empty(index.size), np.empty(index.size)
    b = entry_operand(name, rt.input, g) if name == "grad_weight" else None
    for rows, ta, tb in entry_terms(name, rt.grad_output, b, g, index, NUMPY_ENTRY_BLOCK):
        fold = Fold(fmt, (rows.size,))
        for k in range(ta.shape[1]):
            if tb is None:
                fold.step(ta[:, k], rt.eps_grad_output)
            else:
                x, dv = tb[:, k], ta[:, k]
                fold.product_step(x, dv, rt.eps_input, rt.eps_grad_output)
        acc[rows], e[rows] = fold.acc, fold.e
    return acc, e


def _input_entries_fold(rt: RuntimeInputs, g: Geometry, index: np.ndarray) -> Fold:
    """:func:`input_replay`'s fold for the chosen entries only: the same steps and zero runs."""
    fmt = rt.format
    n, c, h, w = np.unravel_index(index, g.input_shape)
    group, local = np.divmod(c, g.Cg)
    oi, di, vh = input_slots(g.H, g.out_h, g.kH, g.sh, g.ph, g.dh)
    oj, dj, vw = input_slots(g.W, g.out_w, g.kW, g.sw, g.pw, g.dw)
    total = g.Og * g.out_h * g.out_w * g.kH * g.kW
    fold = Fold(fmt, (index.size,))
    last = np.full(index.size, -1, dtype=np.int64)
    for o in range(g.Og):
        oo = group * g.Og + o
        for a in range(oi.shape[0]):
            for b in range(oj.shape[0]):
                valid = vh[a, h] & vw[b, w]
                if not valid.any():
                    continue
                r, q, kr, kq = oi[a, h], oj[b, w], di[a, h], dj[b, w]
                idx = (((o * g.out_h + r) * g.out_w + q) * g.kH + kr) * g.kW + kq
                fold.zero_steps(np.where(valid, idx - last - 1, 0))
                dv = rt.grad_output[n, oo, r, q]
                wv = rt.weight[oo, local, kr, kq]
                fold.product_step(dv, wv, rt.eps_grad_output, rt.eps_weight, where=valid)
                last = np.where(valid, idx, last)
    fold.zero_steps(total - 1 - last)
    return fold
