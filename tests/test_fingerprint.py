"""Arithmetic fingerprints: the probes identify every emulation exactly, fingerprint the CPU
libraries as what they are without a false claim, and every claim is re-derived from its evidence file."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from difftest import fingerprint as fp
from difftest.backends import Backend, get_backend
from difftest.backends.emu_backend import _add_nearest, _fold, _mul32
from difftest.case import Case
from difftest.cli import main
from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS, Geometry
from difftest.layouts import gemm_operands, gemm_result_to_gradient

#: Small enough that the emulations' Python folds are quick, large enough for 16 slots per case.
SMALL = Geometry(N=1, C=16, H=8, W=8, O=16, kH=3, kW=3, stride=1, padding=1)

EMULATIONS = ("emu-binary32", "emu-blocked-8", "emu-tf32", "emu-binary16-acc", "emu-bfloat16-acc", "emu-ftz",
              "emu-rtz-acc", "emu-fft")
CPU = ("numpy-float32", "numpy-float64", "torch-cpu-float32", "torch-cpu-float64", "onnxruntime-cpu-float32")

#: binary32 done right, sequential, mul then add, as the emulations' folds are.
BINARY32_SEQ = {"product_bits": 24, "accumulator_bits": 24, "rounding": "nearest", "fma": False,
                "subnormal_inputs": "kept", "subnormal_outputs": "kept", "order": "sequential", "block": None,
                "deterministic": True, "error_scaling": "per_element"}
#: The bias gradient has no products: fused or not cannot show.
NO_PRODUCTS = {"fma": None}


def expected(name: str) -> dict:
    """What each emulation computes (backends/emu_backend.py), per gradient."""
    base = {g: dict(BINARY32_SEQ, **(NO_PRODUCTS if g == "grad_bias" else {})) for g in GRADIENTS}
    change: dict = {}
    if name == "emu-blocked-8":
        change = {"order": "blocked", "block": 8}
    elif name == "emu-tf32":  # TF32 products are exact in binary32: fused or not cannot show
        change = {"product_bits": 11, "fma": None}
    elif name == "emu-binary16-acc":
        change = {"accumulator_bits": 11, "subnormal_outputs": None}  # binary16 cannot hold binary32's small normals
    elif name == "emu-bfloat16-acc":
        change = {"accumulator_bits": 8}
    elif name == "emu-ftz":
        change = {"subnormal_inputs": "flushed", "subnormal_outputs": "flushed"}
    elif name == "emu-rtz-acc":
        change = {"rounding": "toward_zero"}
    for g in GRADIENTS:
        base[g].update(change)
    if name == "emu-binary16-acc":
        base["grad_bias"]["subnormal_inputs"] = None  # no product lifts a bias subnormal into binary16's range
    if name == "emu-fft":  # FFTs for input and weight: nothing per element to read; numpy's float32 sum for the bias
        for g in ("grad_input", "grad_weight"):
            base[g] = {k: None for k in fp.FIELDS} | {"deterministic": True, "error_scaling": "global",
                                                      "subnormal_outputs": "kept"}
        base["grad_input"]["subnormal_inputs"] = "kept"
        base["grad_bias"]["order"] = "pairwise"
    return base


def claims(print_: fp.Fingerprint) -> dict:
    return {g: {k: gp.claims[k] for k in fp.FIELDS} for g, gp in print_.gradients.items()}


@pytest.fixture(scope="module")
def emulation_prints(tmp_path_factory):
    out = tmp_path_factory.mktemp("fingerprints-emu")
    prints = [fp.fingerprint(name, SMALL) for name in EMULATIONS]
    fp.write(prints, out)
    return {p.backend: p for p in prints}


@pytest.fixture(scope="module")
def cpu_prints(tmp_path_factory):
    """The CPU libraries at the default geometry, where their fast paths run."""
    out = tmp_path_factory.mktemp("fingerprints-cpu")
    available = [n for n in CPU if get_backend(n).availability()[0]]
    prints = [fp.fingerprint(name) for name in available]
    fp.write(prints, out)
    return {p.backend: p for p in prints}


# --- the emulations: the known answers ------------------------------------------------------------

@pytest.mark.parametrize("name", EMULATIONS)
def test_every_emulation_is_identified_exactly(name, emulation_prints):
    assert claims(emulation_prints[name]) == expected(name)


def test_an_emulation_is_identified_at_the_default_geometry():
    """64 → 64, 3×3 at 16×16: folds of 576 (grad_input) and 256 terms, all 64 channels probed."""
    got = fp.fingerprint("emu-blocked-8")
    assert got.geometry == fp.default_geometry()
    assert claims(got) == expected("emu-blocked-8")


class ReversedFold(Backend):
    """binary32 products and sums, each fold run from its last term to its first: an order that
    is none of the candidates."""

    name = "reversed-binary32"
    format = BINARY32

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):
        g = Geometry.of(x.shape, w.shape, stride, padding)
        ops = gemm_operands(x, w, d, g, gradients)  # batched: (groups, rows, inner) @ (groups, inner, cols)
        return {n: gemm_result_to_gradient(n, _fold(a[..., ::-1], b[..., ::-1, :], _mul32, _add_nearest(BINARY32)), g)
                for n, (a, b) in ops.items()}


def test_an_order_outside_the_candidates_is_unknown_not_a_wrong_claim():
    got = claims(fp.fingerprint(ReversedFold(), SMALL))
    for g in GRADIENTS:
        assert got[g]["order"] == "unknown" and got[g]["block"] is None
        assert got[g]["accumulator_bits"] == 24 and got[g]["rounding"] == "nearest"


class NearlySequential(Backend):
    """binary32 products and sums folded sequentially, but for two swapped positions in the middle
    of each fold: on random data its results differ from a sequential fold's, yet the order probe's
    pairs, chosen to tell the candidates apart, can all agree with ``sequential``."""

    name = "nearly-sequential-binary32"
    format = BINARY32
    isolate = False

    def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):
        g = Geometry.of(x.shape, w.shape, stride, padding)
        out = {}
        for n, (a, b) in gemm_operands(x, w, d, g, gradients).items():
            perm = np.arange(a.shape[-1])
            m = perm.size // 2
            perm[[m, m + 1]] = perm[[m + 1, m]]
            out[n] = gemm_result_to_gradient(n, _fold(a[..., perm], b[..., perm, :], _mul32, _add_nearest(BINARY32)), g)
        return out


def test_a_claimed_order_is_emulated_on_fresh_random_folds_and_withdrawn_where_it_does_not_reproduce():
    got = fp.fingerprint(NearlySequential(), SMALL)
    for g in ("grad_bias", "grad_weight"):
        gp = got.gradients[g]
        assert gp.claims["order"] == "unknown" and gp.claims["block"] is None, (g, gp.claims)
        assert "did not reproduce the backend bit for bit on fresh random folds" in gp.notes["order"]
        assert "order" not in gp.evidence and gp.to_dict()["notes"]["order"] == gp.notes["order"]
        assert gp.claims["accumulator_bits"] == 24 and gp.claims["rounding"] == "nearest"
    # the order a claim rests on is gone, so fma False (which needed it) is not claimed
    assert got.gradients["grad_weight"].claims["fma"] is None


def test_a_true_claim_reproduces_bit_for_bit_in_every_variant_it_names():
    slots = fp.slots_of("grad_weight", SMALL)
    claims_ = {"order": "blocked", "block": 8, "accumulator_bits": 24, "rounding": "nearest"}
    variants, why = fp.verify_order(get_backend("emu-blocked-8"), slots, BINARY32, claims_)
    assert why == "" and (False, "format", "leaf", 0) in variants and (True, "format", "leaf", 0) not in variants
    wrong, why = fp.verify_order(get_backend("emu-blocked-8"), slots, BINARY32, dict(claims_, block=16))
    assert wrong == set() and "blocked-16 (24 bits, nearest, 24-bit operands) did not reproduce" in why


def test_rounding_to_w_bits_is_exact():
    from fractions import Fraction

    assert fp.round_bits(Fraction(2**24 + 1), 24, "nearest") == 2**24  # a tie to even
    assert fp.round_bits(Fraction(2**24 + 3), 24, "nearest") == 2**24 + 4
    assert fp.round_bits(Fraction(-(2**24 + 3)), 24, "toward_zero") == -(2**24 + 2)
    assert fp.round_bits(Fraction(1, 3), 2, "nearest") == Fraction(3, 8)
    assert fp.round_bits(Fraction(0), 24, "nearest") == 0


# --- the CPU libraries: what they are, and no false claim -------------------------------------------

@pytest.mark.parametrize("name", CPU)
def test_cpu_libraries_fingerprint_as_what_they_are(name, cpu_prints):
    if name not in cpu_prints:
        pytest.skip(f"{name} is not available here: {get_backend(name).availability()[1]}")
    p = get_backend(name).format.prec
    for g, c in claims(cpu_prints[name]).items():
        assert c["product_bits"] == p, (g, c)
        assert c["accumulator_bits"] in (p, None), (g, c)  # a wider sum that no probe betrays stays None
        assert c["rounding"] == "nearest", (g, c)
        # Measured on this project's machine (AVX-512): no library flushes binary32/64 subnormals.
        # Should one flush on another machine, this says so instead of hiding it.
        assert (c["subnormal_inputs"], c["subnormal_outputs"]) == ("kept", "kept"), \
            f"{name} {g} flushes subnormals here: {c['subnormal_inputs']} inputs, {c['subnormal_outputs']} results"
        assert c["error_scaling"] == "per_element" and c["deterministic"] is True, (g, c)
        assert c["fma"] in (True, False, None) and (g != "grad_bias" or c["fma"] is None)


def _fresh_order_rows(slots: fp.Slots, W: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    n = slots.usable.size
    pairs = [tuple(sorted(int(v) for v in rng.choice(n, 2, replace=False))) for _ in range(count)]
    X, E = fp._order_scale(W, slots.K)
    return fp._order_rows(slots, pairs, X, E), X, E


@pytest.mark.parametrize("name", CPU)
def test_a_claimed_order_predicts_pairs_it_was_not_chosen_on(name, cpu_prints):
    """The claim is checked on fresh FPRev pairs, drawn at random: it must predict every one."""
    if name not in cpu_prints:
        pytest.skip(f"{name} is not available here")
    backend = get_backend(name)
    g = cpu_prints[name].geometry
    for grad, c in claims(cpu_prints[name]).items():
        if c["order"] in (None, "unknown"):
            continue
        slots = fp.slots_of(grad, g)
        rows, X, E = _fresh_order_rows(slots, c["accumulator_bits"], slots.count, seed=12345)
        out = fp._run(backend, fp.build_case(slots, backend.format, 1.0, rows))
        observed = out.ravel()[slots.entries[:len(rows)]] / X
        rnd = fp.rounder(c["accumulator_bits"], c["rounding"], E + 2)
        variants = ([fp.Order("pairwise", variant=v) for v in ("halving", "numpy")] if c["order"] == "pairwise"
                    else [fp.Order(c["order"], c["block"])])
        assert any(np.array_equal(o.fold(np.stack(rows) / X, rnd), observed) for o in variants), (grad, c)


# --- evidence ------------------------------------------------------------------------------------------

def _replay_all(prints: dict, exclude=()):
    checked = 0
    for name, print_ in prints.items():
        for grad, gp in print_.gradients.items():
            c = gp.claims
            decided = {k for k in fp.PROPERTIES if c[k] is not None and c[k] != "unknown"}
            assert set(gp.paths) == decided, (name, grad)  # every claim has its evidence file, nothing else
            for prop, path in gp.paths.items():
                assert Path(path).name == f"{grad}-{prop}.npz" and Path(path).parent.name == name
                want = (c["order"], c["block"]) if prop == "order" else c[prop]
                assert fp.rederive(path, name, prop, grad, c) == want, (name, grad, prop)
                checked += 1
    return checked


def test_every_emulation_claim_is_rederived_from_its_evidence_file(emulation_prints):
    assert _replay_all(emulation_prints) > 150


def test_every_cpu_library_claim_is_rederived_from_its_evidence_file(cpu_prints):
    if not cpu_prints:
        pytest.skip("no CPU library available")
    assert _replay_all(cpu_prints) >= 21 * len(cpu_prints)


@pytest.mark.parametrize("source, prop, grad, other, theirs", [
    # decisive evidence (kept at 10 bits, lost at 11) proves nothing about a backend that keeps both
    ("emu-tf32", "product_bits", "grad_input", "emu-binary32", None),
    ("emu-binary16-acc", "accumulator_bits", "grad_weight", "emu-binary32", None),
    ("emu-rtz-acc", "rounding", "grad_bias", "emu-binary32", "nearest"),
    ("emu-ftz", "subnormal_outputs", "grad_weight", "emu-binary32", "kept"),
    ("emu-ftz", "subnormal_inputs", "grad_input", "emu-binary32", "kept"),
    ("emu-blocked-8", "order", "grad_input", "emu-binary32", ("sequential", None)),
    ("emu-fft", "error_scaling", "grad_weight", "emu-binary32", "per_element"),
    ("emu-binary32", "fma", "grad_weight", "numpy-float32", True),
])
def test_evidence_tells_backends_apart(source, prop, grad, other, theirs, emulation_prints):
    """The same evidence file run through another backend derives that backend's answer (None
    where the evidence is the few decisive variants of the claim, which another backend passes)."""
    gp = emulation_prints[source].gradients[grad]
    context = dict(gp.claims)
    if prop == "fma":
        context["order"], context["block"] = "sequential", None
    assert fp.rederive(gp.paths[prop], other, prop, grad, context) == theirs


def test_an_evidence_file_replays_with_difftest_check(emulation_prints, capsys):
    path = emulation_prints["emu-tf32"].gradients["grad_input"].paths["product_bits"]
    assert Case.load(path).gradients == ("grad_input",)
    assert main(["check", path, "--backend", "emu-tf32", "--backend", "emu-binary32", "--fail-on", "never"]) == 0
    rows = {line.split()[0]: line.split()[3] for line in capsys.readouterr().out.splitlines()
            if line.startswith("emu-")}
    assert rows == {"emu-tf32": "precision", "emu-binary32": "pass"}  # 11-bit inputs show


# --- the pieces ------------------------------------------------------------------------------------------

def test_numpys_pairwise_candidate_is_numpys_sum():
    rng = np.random.default_rng(0)
    rnd = fp.rounder(24, "nearest", 40)
    for K in (5, 16, 100, 129, 300, 1000):
        v = (rng.standard_normal((4, K)) * np.exp2(rng.integers(-8, 8, (4, K)))).astype(np.float32)
        want = v.sum(axis=1).astype(np.float64)
        assert np.array_equal(fp.Order("pairwise", variant="numpy").fold(v.astype(np.float64), rnd), want)


def test_the_batched_blocked_folds_equal_one_candidate_at_a_time():
    rng = np.random.default_rng(1)
    V = np.where(rng.random((6, 75)) < 0.5, 1.0, 0.0)
    V[:, 3], V[:, 40] = 2.0**30, -(2.0**30)
    rnd = fp.rounder(11, "toward_zero", 32)
    cands = fp.order_candidates("grad_bias", SMALL, 75)
    batched = fp.predict(cands, V, rnd)
    for c, row in zip(cands, batched):
        assert np.array_equal(c.fold(V, rnd), row), c.label


def test_the_blocked_candidate_is_the_emulations_blocked_fold():
    from difftest.backends.emu_backend import blocked_backend

    rng = np.random.default_rng(2)
    V = BINARY32.round_array(rng.standard_normal((5, 50)) * np.exp2(rng.integers(-12, 12, (5, 50))))
    ours = fp.Order("blocked", 8).fold(V, fp.rounder(24, "nearest", 0))  # binary32 sums are exact in float64
    theirs = _fold(V, np.ones((50, 1)), _mul32, _add_nearest(BINARY32), block=blocked_backend(8).block)[:, 0]
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("geometry", [SMALL, Geometry(N=2, C=3, H=9, W=7, O=5, kH=3, kW=3, stride=2, padding=1),
                                      Geometry(N=1, C=4, H=6, W=6, O=2, kH=1, kW=1, stride=1, padding=0)])
def test_each_slot_sums_its_own_pattern_times_the_shared_operand(gradient, geometry):
    """The layout behind every probe: slot s's entry is exactly A·Σ pattern_s (checked on the
    exact NF-free float64 sum of small integers), whatever the other slots and the background hold."""
    slots = fp.slots_of(gradient, geometry)
    rng = np.random.default_rng(3)
    rows = [slots.row({u: float(rng.integers(1, 9)) for u in range(slots.usable.size)}) for _ in range(slots.count)]
    case = fp.build_case(slots, BINARY32, 2.0, rows)
    out = fp._run(get_backend("numpy-float64"), case)
    A = 1.0 if gradient == "grad_bias" else 2.0
    assert np.array_equal(out.ravel()[slots.entries], A * np.stack(rows).sum(axis=1))
    assert fp.read_rows(slots, case)[0] == A and np.array_equal(fp.read_rows(slots, case)[1], np.stack(rows))


# --- the command -------------------------------------------------------------------------------------------

TINY = "1,8,6,6,8,3,1,1"


def test_fingerprint_json_has_the_documented_fields_and_writes_the_evidence(tmp_path, capsys):
    out = tmp_path / "fp"
    assert main(["fingerprint", "--backend", "emu-binary32", "--backend", "numpy-float32", "--geometry", TINY,
                 "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((out / "fingerprints.json").read_text())
    assert [b["backend"] for b in doc["backends"]] == ["emu-binary32", "numpy-float32"] and doc["failed"] == []
    for b in doc["backends"]:
        assert b["format"] == "binary32" and b["geometry"]["C"] == 8 and b["geometry"]["kH"] == 3
        assert list(b["gradients"]) == list(GRADIENTS)
        for g, c in b["gradients"].items():
            assert list(c) == [*fp.FIELDS, "evidence"]
            assert c["product_bits"] in (None, 24) and c["accumulator_bits"] in (None, 24)
            assert c["rounding"] in (None, "nearest", "toward_zero", "other")
            assert c["fma"] in (None, True, False)
            assert {c["subnormal_inputs"], c["subnormal_outputs"]} <= {None, "kept", "flushed"}
            assert c["order"] in (None, "sequential", "pairwise", "blocked", "unknown")
            assert c["block"] is None or (c["order"] == "blocked" and isinstance(c["block"], int))
            assert c["deterministic"] in (None, True, False) and c["error_scaling"] in (None, "per_element", "global")
            for prop, path in c["evidence"].items():  # relative to --out: the result directory's own file
                assert path == f"{b['backend']}/{g}-{prop}.npz" and (out / path).is_file()
    assert doc["backends"][0]["gradients"]["grad_input"]["order"] == "sequential"


def test_fingerprint_prints_a_table_by_default(tmp_path, capsys):
    assert main(["fingerprint", "--backend", "emu-rtz-acc", "--geometry", TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["backend", "format", "gradient", "prod", "acc"]
    rows = [line.split() for line in out if line.startswith("emu-rtz-acc")]
    assert [r[2] for r in rows] == list(GRADIENTS)
    assert all(r[3:6] == ["24", "24", "toward_zero"] and "sequential" in r for r in rows)
    assert (tmp_path / "emu-rtz-acc" / "grad_bias-rounding.npz").is_file()


def test_fingerprint_takes_a_catalogue_layer(tmp_path, capsys):
    assert main(["fingerprint", "--backend", "numpy-float64", "--layer", "resnet18.layer2.0.downsample",
                 "--json", "--out", str(tmp_path)]) == 0
    (b,) = json.loads(capsys.readouterr().out)["backends"]
    assert (b["geometry"]["C"], b["geometry"]["O"], b["geometry"]["kH"], b["geometry"]["stride"]) == (64, 128, 1, 2)
    assert all(c["product_bits"] == 53 for c in b["gradients"].values())


@pytest.mark.parametrize("args, says", [
    (["--geometry", "1,8,6,6"], "give eight integers"),
    (["--geometry", "1,8,6,6,8,9,1,0"], "kernel height 9 exceeds"),
    (["--geometry", "1,8,6,6,8,3,0,1"], "stride must be >= 1"),
    (["--layer", "resnet18.nope"], "unknown layer 'resnet18.nope'"),
    (["--layer", "resnet18.conv1", "--geometry", TINY], "not both"),
    (["--backend", "no-such-backend"], "unknown backend"),
])
def test_bad_fingerprint_arguments_exit_2_with_one_line(args, says, tmp_path, capsys):
    assert main(["fingerprint", "--backend", "numpy-float32", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("difftest: error: ") and says in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["fingerprint", "--backend", "numpy-float32", "--geometry", TINY, "--out", str(blocked / "x")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("difftest: error: ") and str(blocked) in line


def test_a_second_run_leaves_no_evidence_of_claims_it_does_not_make(tmp_path, capsys):
    stale = tmp_path / "emu-fft" / "grad_input-order.npz"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's evidence")
    assert main(["fingerprint", "--backend", "emu-fft", "--geometry", TINY, "--out", str(tmp_path)]) == 0
    assert not stale.exists() and (tmp_path / "emu-fft" / "grad_input-error_scaling.npz").is_file()


def test_the_report_shows_what_each_backend_computes(tmp_path, capsys):
    from difftest.campaign import Campaign, CampaignConfig
    from difftest.report import render

    Campaign(CampaignConfig(backends=[get_backend("numpy-float32")], out=tmp_path, database=None, progress=False,
                            examples=2, rounds=1, seed=0)).run()
    assert main(["fingerprint", "--backend", "emu-ftz", "--geometry", TINY, "--out", str(tmp_path)]) == 0
    text = render([tmp_path], tmp_path / "report.html").read_text()
    table = text[text.index('<table id="fingerprint-table">'):]
    table = table[:table.index("</table>")]
    assert "What each backend computes" in text and table.count("<tr>") == 4
    assert table.count("<td>flushed</td>") == 6  # inputs and results, three gradients


def test_bench_times_the_fingerprint_per_backend():
    from difftest import bench

    (row,) = bench.fingerprint_times(backends=("numpy-float32",), size=8)
    assert row["backend"] == "numpy-float32" and row["seconds"] >= row["probe_s"] > 0
    assert row["evidence_files"] >= 21 and row["fingerprint"]["grad_bias"]["product_bits"] == 24
    assert math.isclose(row["seconds"], row["probe_s"] + row["write_s"])


def test_run_fingerprint_puts_what_each_backend_computes_in_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--backend", "numpy-float32", "--examples", "3", "--rounds", "1", "--no-database",
                 "--no-shrink", "--fail-on", "never", "--out", str(out), "--fingerprint", "--quiet"]) == 0
    doc = json.loads((out / "fingerprints.json").read_text())
    assert [b["backend"] for b in doc["backends"]] == ["numpy-float32"]
    assert doc["backends"][0]["gradients"]["grad_input"]["product_bits"] == 24
    assert "What each backend computes" in (out / "report.html").read_text()


def test_a_grouped_or_dilated_layer_is_refused_with_what_to_do_instead():
    from difftest.errors import DifftestError

    with pytest.raises(DifftestError, match=r"--layer mobilenet_v2.features.4.depthwise: .* groups 144; fingerprint a dense layer"):
        fp.layer_geometry("mobilenet_v2.features.4.depthwise")
    with pytest.raises(DifftestError, match="dilation 2"):
        fp.fingerprint("numpy-float32", Geometry(1, 4, 8, 8, 4, 3, 3, 1, 2, 2))
