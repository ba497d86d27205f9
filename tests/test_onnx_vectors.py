"""ONNX's own ``Conv`` and ``ConvTranspose`` node-test vectors, reproduced exactly by the exact
oracle; torch and onnxruntime on grouped, dilated, per-axis and depthwise cases.

The vectors
-----------
ONNX's backend test suite holds, per node test, ``model.onnx`` (one node with its attributes)
and ``test_data_set_0/input_*.pb``, ``output_0.pb``. Where this installation of ``onnx`` ships
them (``onnx/backend/test/data/node/``) they are read from there; some wheels leave that folder
out, and then they are regenerated in memory from the generator modules those files are written
from (``onnx.backend.test.case.node.conv`` and ``.convtranspose``; ``backend-test-tools
generate-data`` writes their ``expect(...)`` calls to disk): the same node, inputs and outputs.

Each 2-D vector is turned into a difftest backward problem, solved by the oracle (``exact``, and
the ``mpmath`` reference too: the vectors are tiny), and the exact result is compared with the
expected output. A 1-D vector is the 2-D problem with a unit height (``(N, C, L)`` as ``(N, C,
1, L)``, kernel ``(·, ·, 1, k)``, stride, dilation and pads 1, 1, 0 on the new axis): the same
sums, so it is reproduced too. 3-D vectors are skipped, with the reason in the skip: a Conv3D
is outside difftest's Conv2D problem.

Notation: per spatial axis, stride ``s``, dilation ``d``, kernel ``k``; ``G`` groups; ``X̃`` is
``X`` zero-padded. difftest's problem (``difftest.geometry``): input ``x (N, C, H, W)``, weight
``w (O, C/G, kH, kW)``, grad_output ``δ (N, O, oh, ow)``, stride ``σ``, dilation ``Δ``, padding
``π``; ``c' = c − g·C/G`` is a channel's index in its group ``g``::

    grad_input[n, c, h, w]  = Σ_{o ∈ group(c), i, j, a, b : i·σh + a·Δh = h + πh, j·σw + b·Δw = w + πw}
                                  δ[n, o, i, j] · w[o, c', a, b]
    grad_weight[o, c', a, b] = Σ_{n, i, j} δ[n, o, i, j] · x̃[n, g·C/G + c', i·σh + a·Δh, j·σw + b·Δw]

ConvTranspose(X, W) is a conv's grad_input
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
ONNX's ConvTranspose, ``X (N, Ci, Hi, Wi)``, ``W (Ci, Co/G, kH, kW)``: the full result is
``F[n, g·Co/G + m, y, x] = Σ_{c ∈ group g, i, j, a, b : i·sh + a·dh = y, j·sw + b·dw = x} X[n, c,
i, j] · W[c, m, a, b]`` for ``0 <= y < Hf = sh·(Hi − 1) + dh·(kH − 1) + 1`` (zero beyond), and the
output is ``Y[n, c, y, x] = F[n, c, y + pb_h, x + pb_w]`` for ``y < Ho = Hf + output_padding_h −
pb_h − pe_h`` (``pb``/``pe``: the begin/end pads; ``F`` read as zero outside its extent). That is
``grad_input`` with ``δ = X``, ``w = W`` (``O = Ci``, ``C = Co``: ONNX's weight layout is ours as
it stands), ``σ = s``, ``Δ = d``, ``groups = G``. Two exact routes:

* *crop*: the problem with ``π = 0`` and ``H = Hf`` (then ``oh = Hi`` exactly), whose
  grad_input is ``F``; ``Y`` is cut from it (or extended by exact zeros) as above. Always valid.
* *padding*: the problem with ``π = pb`` and ``H = Ho``, whose grad_input *is* ``Y``: entry ``h``
  is ``F[h + pb]`` by the formula above. Valid when ``pb >= 0`` and the problem's ``oh`` is
  ``Hi``: ``oh − 1 = ⌊(Ho + 2·pb − dh·(kH − 1) − 1) / sh⌋ = Hi − 1 + ⌊(op + pb − pe) / sh⌋``, i.e.
  ``0 <= op + pb − pe < sh`` (each axis). It runs the oracle's own padding and output-size
  arithmetic; both routes must give the expected output.

The pads come from the attributes as ONNX's reference implementation computes them: ``pads``
as given; with ``output_shape`` (and no ``pads``) ``total = sh·(Hi − 1) + op + dh·(kH − 1) + 1 −
output_shape`` and ``pb = total − total//2``, ``pe = total//2`` (``SAME_UPPER`` swaps them) with
floor division: ``test_convtranspose_output_shape`` has ``total = −1``, so ``pb = 0``, ``pe =
−1``, one zero row at the end, the output of ``test_convtranspose_pad``; ``SAME_UPPER`` /
``SAME_LOWER`` without ``output_shape`` target ``Hi·sh``.

A forward Conv is a grad_weight with roles exchanged
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
ONNX's Conv, ``X (N, C, H, W)``, ``W (M, C/G, kH, kW)``, output channel ``m`` in group ``g``::

    Y[n, m, i, j] = Σ_{c', a, b} W[m, c', a, b] · X̃[n, g·C/G + c', i·sh + a·dh, j·sw + b·dw]

Read it as grad_weight with the conv's *batch* as the problem's input channels, the conv's
*input channels* as the problem's batch, the conv's *output positions* ``(i, j)`` as the
problem's kernel taps and the conv's *kernel taps* ``(a, b)`` as the problem's output positions:

* ``x[c', g·N + n, ·, ·] = X̃[n, g·C/G + c', ·, ·]``, shape ``(C/G, G·N, H', W')``: batch
  ``C/G``, ``G·N`` channels, group ``g``'s being the ``N`` images of the conv's group ``g``;
* ``δ[c', m, a, b] = W[m, c', a, b]`` (``W`` transposed, ``(C/G, M, kH, kW)``), ``O = M``,
  ``groups = G``: output channel ``m`` of group ``g`` reads channels ``g·N … g·N + N − 1``;
* ``σ = d`` and ``Δ = s`` (stride and dilation swap roles), ``π = 0`` with ``X̃`` padded
  explicitly (asymmetric pads are exact zeros) and cut to the ``H' = sh·(oh − 1) + dh·(kH − 1) +
  1`` rows some window reads (the rows after those enter no sum), so the problem's kernel is
  ``oh × ow`` and its output ``(H' − sh·(oh − 1) − 1)/dh + 1 = kH`` rows: δ's shape exactly.

Then ``grad_weight[m, n, i, j] = Σ_{c', a, b} δ[c', m, a, b] · x[c', g·N + n, a·dh + i·sh, b·dw +
j·sw] = Y[n, m, i, j]``: the result is ``(M, N, oh, ow)``, transposed to ``Y``. A bias input
``B`` adds ``B[m]`` (exactly, in Fractions). ``auto_pad`` ``SAME_*`` pads ``max(0, (⌈H/sh⌉ − 1)·sh
+ dh·(kH − 1) + 1 − H)`` in all, the odd one at the end (``SAME_UPPER``) or the beginning
(``SAME_LOWER``); ``VALID`` pads nothing. The same exchange (for the grouped layout too) is
the onnxruntime backend's weight-gradient graph; the mapping tests below check both mappings
against torch on the groups, dilations and asymmetric pads no vector has.

What is compared, and why it is exact
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The oracle's results are exact rationals (``ExactTensor.to_fractions``). Every vector here has
small integers in and small integers out (float32 holds them exactly), so each expected entry,
read as a Fraction, must *equal* the exact value: no tolerance. Should a vector's expected output
be a rounding (an exact value float32 cannot hold), the comparison is with the exact value
correctly rounded to the expected array's format (``Format.round``, to nearest, ties to even),
and the failure message says which comparison was made.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'difftest[onnx]')")

from onnx import helper, numpy_helper  # noqa: E402  (after the skip)

from difftest.case import Case  # noqa: E402
from difftest.check import check_case  # noqa: E402
from difftest.formats import BINARY16, BINARY32, BINARY64  # noqa: E402
from difftest.geometry import GRADIENTS, Geometry  # noqa: E402
from difftest.oracles import get_oracle  # noqa: E402

OPS = ("Conv", "ConvTranspose")
NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
GENERATORS = ("onnx.backend.test.case.node.conv", "onnx.backend.test.case.node.convtranspose")
FORMATS = {np.dtype(np.float16): BINARY16, np.dtype(np.float32): BINARY32, np.dtype(np.float64): BINARY64}


# --- the vectors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    """One node test: its node, its inputs, its expected output, and where it was read."""

    name: str
    node: object  # onnx.NodeProto
    inputs: tuple
    expected: np.ndarray
    source: str

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def dims(self) -> int:
        return self.inputs[0].ndim - 2

    def attributes(self) -> dict:
        out = {}
        for a in self.node.attribute:
            v = helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if isinstance(v, (list, tuple)) else v)
        return out


def _vector(name: str, model, inputs, outputs, source: str) -> Vector | None:
    nodes = list(model.graph.node)
    if len(nodes) != 1 or nodes[0].op_type not in OPS or nodes[0].domain not in ("", "ai.onnx"):
        return None
    return Vector(name, nodes[0], tuple(np.asarray(a) for a in inputs), np.asarray(outputs[0]), source)


def _index(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def shipped_vectors(root: Path = NODE_DATA) -> list[Vector]:
    """The vectors in ``onnx/backend/test/data/node`` (empty where the wheel leaves them out)."""
    out = []
    for folder in sorted(root.glob("test_*conv*")):
        data = folder / "test_data_set_0"
        if not (folder / "model.onnx").is_file() or not data.is_dir():
            continue
        model = onnx.load(str(folder / "model.onnx"))
        read = lambda p: numpy_helper.to_array(onnx.load_tensor(str(p)))  # noqa: E731
        inputs = [read(p) for p in sorted(data.glob("input_*.pb"), key=_index)]
        outputs = [read(p) for p in sorted(data.glob("output_*.pb"), key=_index)]
        v = _vector(folder.name, model, inputs, outputs, str(folder))
        if v is not None:
            out.append(v)
    return out


def generated_vectors() -> list[Vector]:
    """The same vectors from the modules they are generated from (importing one runs its
    ``expect`` calls, which record each test case in the package's list)."""
    from onnx.backend.test.case import node as cases

    for module in GENERATORS:
        importlib.import_module(module)
    recorded = getattr(cases, "_NodeTestCases", None)
    if recorded is None:  # another onnx layout: the public (slower) way
        recorded = [c for op in OPS for c in cases.collect_testcases(op)]
    out, seen = [], set()
    for case in recorded:
        (inputs, outputs), *_ = case.data_sets
        v = _vector(case.name, case.model, inputs, outputs, f"generated by {', '.join(GENERATORS)}")
        if v is not None and v.name not in seen:
            seen.add(v.name)
            out.append(v)
    return out


VECTORS = shipped_vectors() or generated_vectors()


def vector_params():
    for v in VECTORS:
        marks = ()
        if v.dims not in (1, 2):
            marks = pytest.mark.skip(reason=(
                f"{v.dims}-D {v.op} (X {v.inputs[0].shape}, W {v.inputs[1].shape}): a {v.dims}-D convolution is "
                "outside difftest's Conv2D problem (1-D vectors are reproduced as 2-D ones of unit height)"))
        yield pytest.param(v, id=v.name, marks=marks)


# --- attributes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attrs:
    """A 2-D node's attributes with ONNX's defaults filled in: per axis ``(h, w)``."""

    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]
    pads_end: tuple[int, int]
    output_padding: tuple[int, int]
    group: int


def as_2d(v: Vector) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """``X``, ``W``, ``B`` (or ``None``) as float64 2-D arrays and the attributes as 2-D lists: a
    1-D vector gains a unit height (stride, dilation 1; pads, output padding 0; output shape 1)."""
    X, W = (np.asarray(a, dtype=np.float64) for a in v.inputs[:2])
    B = np.asarray(v.inputs[2], dtype=np.float64) if len(v.inputs) > 2 else None
    assert np.array_equal(X.astype(v.inputs[0].dtype), v.inputs[0]), "input values changed on the way to float64"
    a = v.attributes()
    if v.dims == 2:
        return X, W, B, a
    lift = {"strides": 1, "dilations": 1, "kernel_shape": 1, "output_padding": 0, "output_shape": 1}
    a = {k: ([lift[k], *val] if k in lift else val) for k, val in a.items()}
    if "pads" in a:
        a["pads"] = [0, a["pads"][0], 0, a["pads"][1]]
    return X[:, :, None, :], W[:, :, None, :], B, a


def attributes(v: Vector, X: np.ndarray, W: np.ndarray, a: dict) -> Attrs:
    """Fill ONNX's defaults and resolve ``auto_pad`` / ``output_shape`` into begin and end pads,
    as ONNX's reference implementation does (see the module docstring)."""
    k = W.shape[2:]
    if "kernel_shape" in a:
        assert tuple(a["kernel_shape"]) == k, f"kernel_shape {a['kernel_shape']} is not the weight's {k}"
    s, d = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    op = tuple(a.get("output_padding", (0, 0)))
    auto_pad = a.get("auto_pad", "NOTSET")
    extent = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    size = X.shape[2:]
    derived = v.op == "ConvTranspose" and "output_shape" in a and "pads" not in a
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or derived:
        if v.op == "Conv":
            total = [max(0, (-(-size[i] // s[i]) - 1) * s[i] + extent[i] - size[i]) for i in range(2)]
            small = [t // 2 for t in total]
            begin = [t - m for t, m in zip(total, small)] if auto_pad == "SAME_LOWER" else small
        else:
            target = a.get("output_shape") or [size[i] * s[i] for i in range(2)]
            total = [s[i] * (size[i] - 1) + op[i] + extent[i] - target[i] for i in range(2)]
            small = [t // 2 for t in total]  # floor division, as the reference implementation
            begin = small if auto_pad == "SAME_UPPER" else [t - m for t, m in zip(total, small)]
        end = [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        begin, end = [0, 0], [0, 0]
    else:
        assert auto_pad == "NOTSET", auto_pad
        pads = a.get("pads", [0, 0, 0, 0])
        begin, end = pads[:2], pads[2:]
    return Attrs(s, d, tuple(begin), tuple(end), op, int(a.get("group", 1)))


# --- the mappings --------------------------------------------------------------------------


def conv_forward_exact(X, W, t: Attrs, oracle) -> np.ndarray:
    """ONNX ``Conv(X, W)`` exactly (Fractions): the oracle's grad_weight with roles exchanged."""
    assert min(t.pads_begin + t.pads_end) >= 0, "Conv pads are never negative"
    N, C, _, _ = X.shape
    M, Cg, kH, kW = W.shape
    G = t.group
    (sh, sw), (dh, dw) = t.strides, t.dilations
    Xp = np.pad(X, ((0, 0), (0, 0), (t.pads_begin[0], t.pads_end[0]), (t.pads_begin[1], t.pads_end[1])))
    oh = (Xp.shape[2] - dh * (kH - 1) - 1) // sh + 1
    ow = (Xp.shape[3] - dw * (kW - 1) - 1) // sw + 1
    Hu, Wu = sh * (oh - 1) + dh * (kH - 1) + 1, sw * (ow - 1) + dw * (kW - 1) + 1
    Xp = Xp[:, :, :Hu, :Wu]  # the rows and columns some window reads
    x = Xp.reshape(N, G, Cg, Hu, Wu).transpose(2, 1, 0, 3, 4).reshape(Cg, G * N, Hu, Wu)
    d = W.transpose(1, 0, 2, 3)
    g = Geometry(Cg, G * N, Hu, Wu, M, oh, ow, stride=(dh, dw), padding=0, dilation=(sh, sw), groups=G)
    assert g.grad_output_shape == d.shape
    w = np.zeros(g.weight_shape)  # the weight enters no grad_weight entry
    gw = oracle.spec_gradients(x, w, d, g, ("grad_weight",))["grad_weight"].to_fractions()
    return gw.transpose(1, 0, 2, 3)


def conv_transpose_exact(X, W, t: Attrs, oracle, route: str) -> np.ndarray:
    """ONNX ``ConvTranspose(X, W)`` exactly (Fractions): the oracle's grad_input, by the *crop*
    or the *padding* route (module docstring)."""
    N, Ci, Hi, Wi = X.shape
    _, Cog, kH, kW = W.shape
    C = t.group * Cog
    full = [t.strides[i] * ((Hi, Wi)[i] - 1) + t.dilations[i] * ((kH, kW)[i] - 1) + 1 for i in range(2)]
    out = [full[i] + t.output_padding[i] - t.pads_begin[i] - t.pads_end[i] for i in range(2)]
    if route == "padding":
        g = Geometry(N, C, *out, Ci, kH, kW, stride=t.strides, padding=t.pads_begin, dilation=t.dilations,
                     groups=t.group)
        assert (g.out_h, g.out_w) == (Hi, Wi)
        x = np.zeros(g.input_shape)  # the input enters no grad_input entry
        return oracle.spec_gradients(x, W, X, g, ("grad_input",))["grad_input"].to_fractions()
    g = Geometry(N, C, *full, Ci, kH, kW, stride=t.strides, padding=0, dilation=t.dilations, groups=t.group)
    assert (g.out_h, g.out_w) == (Hi, Wi)
    F = oracle.spec_gradients(np.zeros(g.input_shape), W, X, g, ("grad_input",))["grad_input"].to_fractions()
    Y = np.full((N, C, *out), Fraction(0), dtype=object)
    rows = [(max(0, -b), min(o, f - b)) for b, o, f in zip(t.pads_begin, out, full)]  # Y[y] = F[y + pb]
    (r0, r1), (c0, c1), (bh, bw) = *rows, t.pads_begin
    if r1 > r0 and c1 > c0:
        Y[:, :, r0:r1, c0:c1] = F[:, :, r0 + bh:r1 + bh, c0 + bw:c1 + bw]
    return Y


def padding_route_applies(X, t: Attrs) -> bool:
    """``pb >= 0`` and ``0 <= op + pb − pe < s`` on each axis (module docstring)."""
    return all(t.pads_begin[i] >= 0 and 0 <= t.output_padding[i] + t.pads_begin[i] - t.pads_end[i] < t.strides[i]
               for i in range(2))


def reproduce(v: Vector, oracle) -> dict[str, np.ndarray]:
    """The vector's output by every route that applies, each an object array of Fractions in the
    expected output's shape."""
    X, W, B, a = as_2d(v)
    t = attributes(v, X, W, a)
    if v.op == "Conv":
        results = {"grad_weight, roles exchanged": conv_forward_exact(X, W, t, get_oracle(oracle))}
    else:
        results = {"grad_input, crop": conv_transpose_exact(X, W, t, get_oracle(oracle), "crop")}
        if padding_route_applies(X, t):
            results["grad_input, padding"] = conv_transpose_exact(X, W, t, get_oracle(oracle), "padding")
    if B is not None:
        bias = np.array([Fraction(float(b)) for b in B], dtype=object)[None, :, None, None]
        results = {k: r + bias for k, r in results.items()}
    return {k: r.reshape(v.expected.shape) for k, r in results.items()}


def mismatches(exact: np.ndarray, expected: np.ndarray) -> tuple[str, list]:
    """How ``expected`` was compared with the exact values, and the entries that differ."""
    fmt = FORMATS[expected.dtype]
    want = np.array([Fraction(float(e)) for e in expected.ravel()], dtype=object)
    got = exact.ravel()
    if all(fmt.is_representable(x) for x in got):
        how = f"exact equality (every exact value is a {fmt.name} value)"
    else:
        how = (f"the exact value rounded to nearest {fmt.name}, ties to even "
               f"(some exact values are not {fmt.name} values)")
        got = np.array([fmt.round(x) for x in got], dtype=object)
    bad = [(np.unravel_index(k, expected.shape), str(e), str(x)) for k, (e, x) in enumerate(zip(want, got)) if e != x]
    return how, bad


# --- tests: the vectors ------------------------------------------------------------------


def test_onnx_has_the_conv_and_conv_transpose_vectors():
    names = {v.name for v in VECTORS}
    assert {"test_basic_conv_with_padding", "test_conv_with_strides_and_asymmetric_padding",
            "test_conv_with_autopad_same", "test_convtranspose", "test_convtranspose_pads",
            "test_convtranspose_dilations", "test_convtranspose_group_2", "test_convtranspose_output_shape"} <= names, (
        f"expected ONNX's Conv/ConvTranspose node tests, found {sorted(names)} "
        f"({VECTORS[0].source if VECTORS else 'none'})")


@pytest.mark.parametrize("oracle", ["exact", "mpmath"])
@pytest.mark.parametrize("vector", list(vector_params()))
def test_oracle_reproduces_the_onnx_vector_exactly(vector, oracle):
    for route, exact in reproduce(vector, oracle).items():
        assert exact.shape == vector.expected.shape, (route, exact.shape, vector.expected.shape)
        how, bad = mismatches(exact, vector.expected)
        assert not bad, (f"{vector.name} by {route} ({how}): {len(bad)} entries differ, "
                         f"first (index, expected, exact): {bad[:5]}")


def test_the_data_folder_reader_reads_what_onnx_writes(tmp_path):
    """Where the wheel ships no data folder the reader is not run above: run it on a folder
    written in ONNX's layout from the vectors in hand."""
    for v in VECTORS[:3] + [w for w in VECTORS if w.op == "ConvTranspose"][:3]:
        data = tmp_path / v.name / "test_data_set_0"
        data.mkdir(parents=True)
        names = list(v.node.input)
        graph = helper.make_graph([v.node], v.name, [
            helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, a.shape) for n, a in zip(names, v.inputs)],
            [helper.make_tensor_value_info(v.node.output[0], onnx.TensorProto.FLOAT, v.expected.shape)])
        onnx.save(helper.make_model(graph), str(tmp_path / v.name / "model.onnx"))
        for k, a in enumerate(v.inputs):
            (data / f"input_{k}.pb").write_bytes(numpy_helper.from_array(a, names[k]).SerializeToString())
        (data / "output_0.pb").write_bytes(numpy_helper.from_array(v.expected, v.node.output[0]).SerializeToString())
    (tmp_path / "test_convinteger").mkdir()  # no model: passed over
    read = shipped_vectors(tmp_path)
    assert [r.name for r in read] == sorted(r.name for r in read) and len(read) == 6
    for r in read:
        v = next(w for w in VECTORS if w.name == r.name)
        assert r.attributes() == v.attributes() and np.array_equal(r.expected, v.expected)
        assert all(np.array_equal(a, b) for a, b in zip(r.inputs, v.inputs))


def test_the_padding_route_covers_most_conv_transpose_vectors():
    """The padding route (the oracle's own padding arithmetic) applies to most 2-D ConvTranspose
    vectors, not only the crop route."""
    covered = [v.name for v in VECTORS if v.op == "ConvTranspose" and v.dims in (1, 2)
               and len(reproduce(v, "exact")) == 2]
    assert len(covered) >= 6, covered


# --- tests: the mappings on what no vector has -------------------------------------------

def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed (pip install 'difftest[torch]')")


def small_ints(rng, shape):
    return rng.integers(-4, 5, shape).astype(np.float64)


def as_fractions(a: np.ndarray) -> np.ndarray:
    return np.array([Fraction(float(x)) for x in a.ravel()], dtype=object).reshape(a.shape)


def test_forward_mapping_equals_torch_on_a_grouped_dilated_asymmetrically_padded_conv():
    """Small integers: torch's float64 forward is exact, so the two must agree entry for entry."""
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    X, W = small_ints(rng, (2, 6, 9, 8)), small_ints(rng, (4, 3, 3, 2))
    t = Attrs(strides=(2, 3), dilations=(2, 1), pads_begin=(1, 0), pads_end=(2, 1), output_padding=(0, 0), group=2)
    Xp = torch.nn.functional.pad(torch.from_numpy(X), (0, 1, 1, 2))  # (w_begin, w_end, h_begin, h_end)
    ref = torch.nn.functional.conv2d(Xp, torch.from_numpy(W), stride=t.strides, dilation=t.dilations, groups=2).numpy()
    got = conv_forward_exact(X, W, t, get_oracle("exact"))
    assert got.shape == ref.shape and (got == as_fractions(ref)).all()


@pytest.mark.parametrize("route", ["crop", "padding"])
def test_transpose_mapping_equals_torch_on_a_grouped_dilated_strided_conv_transpose(route):
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    X, W = small_ints(rng, (2, 4, 4, 5)), small_ints(rng, (4, 3, 3, 2))
    t = Attrs(strides=(3, 2), dilations=(1, 2), pads_begin=(1, 2), pads_end=(1, 2), output_padding=(2, 1), group=2)
    assert padding_route_applies(X, t)
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(X), torch.from_numpy(W), stride=t.strides, padding=t.pads_begin,
        output_padding=t.output_padding, groups=2, dilation=t.dilations).numpy()
    got = conv_transpose_exact(X, W, t, get_oracle("exact"), route)
    assert got.shape == ref.shape and (got == as_fractions(ref)).all()


# --- tests: the backends on grouped, dilated, per-axis and depthwise cases ---------------

CASES = {  # name: (N, C, H, W, O, kH, kW, stride, padding, dilation, groups)
    "grouped": (2, 4, 7, 6, 6, 3, 3, 1, 1, 1, 2),
    "dilated": (1, 3, 9, 8, 2, 3, 2, 1, (2, 1), (2, 3), 1),
    "per-axis": (2, 2, 8, 9, 3, 3, 2, (2, 1), (1, 0), 1, 1),
    "depthwise": (1, 4, 7, 7, 4, 3, 3, 2, 1, 1, 4),
}
BACKENDS = ["torch-cpu-float64", "onnxruntime-cpu-float32"]


def backend_or_skip(name: str):
    from difftest.backends import get_backend

    b = get_backend(name)
    ok, why = b.availability()
    if not ok:
        pytest.skip(why)
    return b


def case_of(shape, fmt, seed: int, values="normal") -> Case:
    N, C, H, W, O, kH, kW, s, p, dil, G = shape
    g = Geometry(N, C, H, W, O, kH, kW, s, p, dil, G)
    rng = np.random.default_rng(seed)
    if values == "normal":
        draw = lambda sh: fmt.round_array(rng.standard_normal(sh))  # noqa: E731
    else:
        draw = lambda sh: small_ints(rng, sh)  # noqa: E731
    return Case(draw(g.input_shape), draw(g.weight_shape), draw(g.grad_output_shape), stride=s, padding=p,
                dilation=dil, groups=G, format=fmt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CASES.values(), ids=CASES.keys())
def test_backend_is_within_its_bound_on_generalised_geometries(backend, shape):
    b = backend_or_skip(backend)
    (result,) = check_case(case_of(shape, b.format, seed=7), [b])
    for g in GRADIENTS:
        r = result.gradients[g]
        assert r.verdict not in ("precision", "error"), (g, r)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CASES.values(), ids=CASES.keys())
def test_backend_equals_the_exact_gradient_on_small_integers(backend, shape):
    """Every sum of small integers is exact in float32 in any order: any difference is a wrong
    graph or a wrong argument, not rounding."""
    b = backend_or_skip(backend)
    case = case_of(shape, b.format, seed=8, values="ints")
    exact = get_oracle("exact").spec_gradients(case.input, case.weight, case.grad_output, case.geometry)
    got = b.conv2d_backward(case.input, case.weight, case.grad_output, case.stride, case.padding,
                            dilation=case.dilation, groups=case.groups)
    for g in GRADIENTS:
        assert got[g].shape == exact[g].shape and np.array_equal(got[g], exact[g].nearest), g


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_onnx_graph_of_one_gradient_equals_the_full_graph_on_a_grouped_dilated_case(gradient):
    b = backend_or_skip("onnxruntime-cpu-float32")
    case = case_of(CASES["depthwise"][:9] + ((2, 1), 2), b.format, seed=9)
    kw = {"dilation": case.dilation, "groups": case.groups}
    args = (case.input, case.weight, case.grad_output, case.stride, case.padding)
    alone = b.conv2d_backward(*args, gradients=(gradient,), **kw)
    assert set(alone) == {gradient} and np.array_equal(alone[gradient], b.conv2d_backward(*args, **kw)[gradient])
