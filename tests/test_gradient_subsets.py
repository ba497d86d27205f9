"""Requested gradients: a case asks a backend for some of the three gradients, and only those are
computed, judged and recorded (frameworks run other kernels when fewer are requested)."""

import itertools
import json

import numpy as np
import pytest

from difftest import Case, assert_within_bounds
from difftest.backends import Backend, all_backends, get_backend
from difftest.backends.base import backward
from difftest.check import check_case
from difftest.cli import main
from difftest.errors import CaseFileError, DifftestError, InvalidCase
from difftest.explain import reproduce_command
from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS, Geometry
from difftest.outcome import BackendResult, FindingKey, ResultRecord
from difftest.report import render
from difftest.store import Recorder, read_results
from difftest.summary import format_summary, junit_xml

SUBSETS = [s for k in range(1, 4) for s in itertools.combinations(GRADIENTS, k)]
#: the CPU backends a default campaign runs here (the emu-* references break the bounds by design)
DEFAULT = [b for b in all_backends().values() if b.availability()[0] and b.default_campaign]
#: backends whose gradients do not depend on which others are requested, bit for bit
DETERMINISTIC = ("numpy-", "nf-")
#: the id examples/cancellation.npz had before cases could request gradients
CANCELLATION_ID = "7b0c197cf8bf18b1"


def ordinary_case(fmt=BINARY32, gradients=GRADIENTS, seed=3) -> Case:
    """Input (2, 2, 7, 6), weight (3, 2, 3, 3), stride 2, padding 1: values of every format."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: fmt.round_array(np.round(rng.standard_normal(shape) * 16) / 16)  # noqa: E731
    return Case(r(2, 2, 7, 6), r(3, 2, 3, 3), r(2, 3, 4, 3), stride=2, padding=1, format=fmt, gradients=gradients)


def sub_id(s) -> str:
    return "+".join(g.removeprefix("grad_") for g in s)


# --- cases -----------------------------------------------------------------------------------

def test_a_case_requests_all_three_gradients_unless_told_otherwise():
    case = Case.load("examples/cancellation.npz")
    assert case.gradients == GRADIENTS and case.all_gradients
    assert case.describe()["gradients"] == list(GRADIENTS)


def test_a_case_file_of_every_gradient_is_byte_for_byte_as_before_and_keeps_its_id(tmp_path):
    case = Case.load("examples/cancellation.npz")
    assert case.case_id == CANCELLATION_ID
    saved = case.save(tmp_path / "c.npz")
    assert saved.read_bytes() == open("examples/cancellation.npz", "rb").read()
    with np.load(saved) as z:
        assert "gradients" not in z.files


def test_a_subset_round_trips_through_the_case_file_and_changes_the_id(tmp_path):
    case = Case.load("examples/cancellation.npz", gradients=["grad_bias", "grad_input"])
    assert case.gradients == ("grad_input", "grad_bias")  # canonical order
    assert case.case_id != CANCELLATION_ID
    back = Case.load(case.save(tmp_path / "c.npz"))
    assert back.gradients == ("grad_input", "grad_bias") and back.case_id == case.case_id
    assert back.describe()["gradients"] == ["grad_input", "grad_bias"]
    with np.load(tmp_path / "c.npz") as z:
        assert list(z["gradients"]) == ["grad_input", "grad_bias"]


def test_the_load_override_beats_the_files_gradients(tmp_path):
    path = Case.load("examples/cancellation.npz", gradients="weight").save(tmp_path / "c.npz")
    assert Case.load(path).gradients == ("grad_weight",)
    assert Case.load(path, gradients=GRADIENTS).case_id == CANCELLATION_ID


def test_a_case_file_may_name_its_gradients_in_one_comma_separated_string(tmp_path):
    with np.load("examples/cancellation.npz") as z:
        data = {k: z[k] for k in z.files}
    np.savez(tmp_path / "c.npz", **data, gradients=np.str_("bias, grad_input"))
    assert Case.load(tmp_path / "c.npz").gradients == ("grad_input", "grad_bias")


def test_short_names_and_repeats_give_the_canonical_tuple():
    case = ordinary_case(gradients=("bias", "grad_input", "input", "bias"))
    assert case.gradients == ("grad_input", "grad_bias")


@pytest.mark.parametrize("bad, says", [
    ([], "no gradient requested"),
    ("", "no gradient requested"),
    (["grad_output"], "unknown gradient 'grad_output'"),
    ("grad_input,grad_biass", "unknown gradient 'grad_biass'"),
    ([3], "unknown gradient 3"),
    (7, "gradients must be names"),
])
def test_an_invalid_request_is_refused_listing_the_valid_names(bad, says):
    with pytest.raises(InvalidCase) as info:
        ordinary_case(gradients=bad)
    assert says in str(info.value) and "grad_input, grad_weight, grad_bias" in str(info.value)


def test_a_case_file_with_invalid_gradients_names_the_file(tmp_path):
    with np.load("examples/cancellation.npz") as z:
        data = {k: z[k] for k in z.files}
    np.savez(tmp_path / "bad.npz", **data, gradients=np.array(["grad_input", "grad_kernel"]))
    with pytest.raises(CaseFileError, match="bad.npz: unknown gradient 'grad_kernel'"):
        Case.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "num.npz", **data, gradients=np.array([1, 2]))
    with pytest.raises(CaseFileError, match="gradients must be a string array"):
        Case.load(tmp_path / "num.npz")


# --- backends --------------------------------------------------------------------------------

def test_the_default_backends_are_here():
    names = {b.name for b in DEFAULT}
    for name in ("numpy-float32", "torch-cpu-float32", "onnxruntime-cpu-float32", "nf-binary32"):
        assert name in names, f"{name} is not available here"


@pytest.mark.parametrize("subset", SUBSETS, ids=sub_id)
@pytest.mark.parametrize("backend", DEFAULT, ids=lambda b: b.name)
def test_every_default_backend_returns_exactly_the_requested_gradients(backend, subset):
    case = ordinary_case(backend.format, gradients=subset)
    rt = case.runtime()
    out = backend.conv2d_backward(rt.input, rt.weight, rt.grad_output, case.stride, case.padding, gradients=subset)
    assert tuple(out) == subset
    for g in subset:
        assert np.asarray(out[g]).shape == case.geometry.shape_of(g)
    if backend.name.startswith(DETERMINISTIC):  # the same bits as when all three are requested
        full = backend.conv2d_backward(rt.input, rt.weight, rt.grad_output, case.stride, case.padding)
        from difftest import replay

        replay._CACHE.clear()  # the nf references compute the subset afresh, not from the cache
        again = backend.conv2d_backward(rt.input, rt.weight, rt.grad_output, case.stride, case.padding,
                                        gradients=subset)
        for g in subset:
            assert np.array_equal(out[g], full[g]) and np.array_equal(again[g], full[g]), g
    (result,) = check_case(case, [backend])
    assert result.requested == subset and tuple(result.gradients) == subset
    for g, r in result.gradients.items():
        assert r.verdict in ("pass", "order"), (g, r)


@pytest.mark.parametrize("subset", SUBSETS, ids=sub_id)
def test_torch_asks_autograd_for_the_requested_gradients_only(subset):
    torch = pytest.importorskip("torch")
    dispatch = pytest.importorskip("torch.utils._python_dispatch")
    masks = []

    class Record(dispatch.TorchDispatchMode):  # watches the real kernels, changes nothing
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default:
                masks.append(list(args[-1]))  # output_mask: (input, weight, bias)
            return func(*args, **(kwargs or {}))

    case = ordinary_case()
    with Record():
        get_backend("torch-cpu-float32").conv2d_backward(case.input, case.weight, case.grad_output, case.stride,
                                                         case.padding, gradients=subset)
    assert masks == [[g in subset for g in GRADIENTS]]


@pytest.mark.parametrize("subset", SUBSETS, ids=sub_id)
def test_the_onnx_graph_computes_exactly_the_requested_gradients(subset):
    pytest.importorskip("onnx")
    from difftest.backends.onnx_backend import backward_graph

    graph = backward_graph(Geometry(2, 2, 7, 6, 3, 3, 3, 2, 1), subset).graph
    assert tuple(o.name for o in graph.output) == subset
    ops = {n.op_type for n in graph.node}
    assert ("ConvTranspose" in ops) == ("grad_input" in subset)
    assert ("Conv" in ops) == ("grad_weight" in subset)
    assert ("ReduceSum" in ops) == ("grad_bias" in subset)
    assert ({i.name for i in graph.input} == {"dy"}) == (subset == ("grad_bias",))  # δ alone suffices


# --- the pipeline ----------------------------------------------------------------------------

@pytest.mark.parametrize("subset", SUBSETS, ids=sub_id)
def test_check_case_judges_only_the_requested_gradients_as_the_full_check_judges_them(subset):
    backends = ["numpy-float32", "nf-binary32"]
    full = check_case(ordinary_case(), backends)
    part = check_case(ordinary_case(gradients=subset), backends)
    for f, p in zip(full, part):
        assert p.requested == subset and tuple(p.gradients) == subset and tuple(p.outputs) == subset
        for g in subset:  # oracle, model and bounds of a subset are those of the full case
            assert p.gradients[g].to_dict() == f.gradients[g].to_dict()
            assert np.array_equal(p.gradients[g].entries.bound_order_free, f.gradients[g].entries.bound_order_free)


def test_a_whole_case_verdict_covers_the_requested_gradients_only():
    case = ordinary_case(gradients=("grad_weight",))
    big = Case(case.input * 2.0**20, case.weight, case.grad_output, stride=2, padding=1, gradients=("grad_bias",))
    (domain,) = check_case(big, ["numpy-float16"])  # float16 storage cannot hold 2^20-scaled inputs
    assert domain.requested == ("grad_bias",) and list(domain.gradients) == ["grad_bias"]
    assert domain.verdict == "domain"

    class Raising(Backend):
        name, format = "raising-float32", BINARY32

        def conv2d_backward(self, x, w, d, stride, padding, gradients=GRADIENTS):
            raise RuntimeError("no kernel for this request")

    (error,) = check_case(case, [Raising()])
    assert list(error.gradients) == ["grad_weight"] and error.verdict == "error"
    assert "no kernel for this request" in error.gradients["grad_weight"].message


def test_a_backend_omitting_a_requested_gradient_is_an_error_naming_it():
    def only_input(x, w, d, stride, padding, gradients):
        return {"grad_input": np.zeros(x.shape)}

    (r,) = check_case(ordinary_case(gradients=("grad_input", "grad_bias")), [(only_input, "binary32")])
    assert r.verdict == "error" and "returned no grad_bias" in r.gradients["grad_bias"].message


class OldPlugin(Backend):
    """A plugin written before gradients could be requested: five arguments, three gradients."""

    name, format = "old-plugin-float32", BINARY32

    def __init__(self):
        self.calls = 0

    def conv2d_backward(self, x, w, d, stride, padding):
        self.calls += 1
        out = get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding)
        return {**out, "extra": np.zeros(1)}


class DuckPlugin:
    """Not a Backend subclass: a name, a format and the old method (as_backend takes it)."""

    name, format, device = "duck-float32", BINARY32, "cpu"

    def conv2d_backward(self, x, w, d, stride, padding):
        return get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding)

    def environment(self):
        return {"backend": self.name}


@pytest.mark.parametrize("subset", SUBSETS, ids=sub_id)
def test_a_plugin_with_the_old_five_argument_signature_is_judged_on_the_request(subset):
    old = OldPlugin()
    case = ordinary_case(gradients=subset)
    got, duck, ref = check_case(case, [old, DuckPlugin(), "numpy-float32"])
    assert old.calls == 1
    for r in (got, duck):
        assert r.requested == subset and tuple(r.gradients) == subset and tuple(r.outputs) == subset
        assert {g: x.to_dict() for g, x in r.gradients.items()} == {g: x.to_dict() for g, x in ref.gradients.items()}
    rt = case.runtime()
    assert tuple(backward(old, rt.input, rt.weight, rt.grad_output, 2, 1, subset)) == subset


def test_a_function_that_takes_gradients_is_told_the_request():
    seen = []

    def mine(x, w, d, stride, padding, gradients):
        seen.append(gradients)
        full = get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding)
        return {g: full[g] for g in gradients}

    (r,) = check_case(ordinary_case(gradients="weight,bias"), [(mine, "binary32")])
    assert seen == [("grad_weight", "grad_bias")] and r.verdict in ("pass", "order")


def test_a_function_returning_a_tuple_is_judged_on_the_request_only():
    def torchless(x, w, d, stride, padding):  # the README's (gi, gw, gb) convention, unrequested ones None
        full = get_backend("numpy-float32").conv2d_backward(x, w, d, stride, padding)
        return None, full["grad_weight"], None

    (r,) = check_case(ordinary_case(gradients=("grad_weight",)), [(torchless, "binary32")])
    assert list(r.gradients) == ["grad_weight"] and r.gradients["grad_weight"].verdict in ("pass", "order")


# --- results ---------------------------------------------------------------------------------

def test_requested_round_trips_through_to_dict_and_from_dict():
    (r,) = check_case(ordinary_case(gradients=("grad_input", "grad_bias")), ["numpy-float32"])
    d = json.loads(json.dumps(r.to_dict()))
    assert d["requested"] == ["grad_input", "grad_bias"] and set(d["gradients"]) == {"grad_input", "grad_bias"}
    back = BackendResult.from_dict(d)
    assert back.requested == ("grad_input", "grad_bias") and back.to_dict() == d
    rec = ResultRecord.of(r, "abc", ordinary_case(gradients=("grad_input", "grad_bias")).geometry.as_dict())
    assert ResultRecord.from_dict(json.loads(json.dumps(rec.to_dict()))).requested == ("grad_input", "grad_bias")


def test_a_line_without_requested_reads_as_all_three_and_a_mismatch_is_refused():
    (r,) = check_case(ordinary_case(), ["numpy-float32"])
    d = r.to_dict()
    del d["requested"]
    assert BackendResult.from_dict(d).requested == GRADIENTS
    del d["gradients"]["grad_bias"]
    with pytest.raises(DifftestError, match="gradients must hold exactly grad_input, grad_weight, grad_bias"):
        BackendResult.from_dict(d)
    d["requested"] = ["grad_input"]
    with pytest.raises(DifftestError, match="gradients must hold exactly grad_input"):
        BackendResult.from_dict(d)


@pytest.fixture(scope="module")
def subset_results(tmp_path_factory):
    """A result directory: numpy-float32 and nf-binary32 asked for grad_bias alone on the
    cancellation case (numpy: order, recorded as a finding's reproducer), and nf-binary32 also on
    a full case."""
    out = tmp_path_factory.mktemp("subset")
    rec = Recorder(out, seed=0, shard=(1, 1))
    bias_only, full = Case.load("examples/cancellation.npz", gradients=("grad_bias",)), Case.load("examples/stride2_pad1.npz")
    try:
        numpy, nf = check_case(bias_only, ["numpy-float32", "nf-binary32"])
        rec.record(bias_only, [numpy], phase="shrunk", round_no=0,
                   findings=[FindingKey("numpy-float32", "grad_bias", "order")])
        rec.record(bias_only, [nf], phase="search", round_no=0)
        rec.record(full, check_case(full, ["nf-binary32"]), phase="search", round_no=0)
    finally:
        rec.close()
    return out


def test_results_jsonl_records_the_request_and_the_case_file_replays_it(subset_results, capsys):
    records = read_results(subset_results)
    numpy = next(r for r in records if r.backend == "numpy-float32")
    assert numpy.requested == ("grad_bias",) and list(numpy.gradients) == ["grad_bias"]
    assert numpy.gradients["grad_bias"].verdict == "order"
    line = json.loads((subset_results / "results.jsonl").read_text().splitlines()[0])
    assert line["requested"] == ["grad_bias"]
    assert Case.load(subset_results / numpy.case_file).gradients == ("grad_bias",)
    # the command the summary prints replays the subset
    summary = format_summary(records, replay_dir=subset_results)
    cmd = next(line.split("reproduce: ", 1)[1] for line in summary.splitlines() if "reproduce:" in line)
    assert cmd.endswith("--backend numpy-float32 --gradients grad_bias")
    argv = cmd.split()[1:]
    assert main([*argv, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["case"]["gradients"] == ["grad_bias"]
    assert list(doc["results"][0]["gradients"]) == ["grad_bias"]


def test_the_summaries_show_a_gradient_never_requested_as_not_requested(subset_results):
    records = read_results(subset_results)
    summary = format_summary(records)
    rows = [line for line in summary.splitlines() if line.startswith("numpy-float32")]
    assert [line.split()[1] for line in rows] == list(GRADIENTS)
    assert "not requested" in rows[0] and "not requested" in rows[1] and "not requested" not in rows[2]
    xml = junit_xml(records, "order")
    assert xml.count("<skipped") == 2 and 'tests="6"' in xml and 'skipped="2"' in xml


def test_the_html_report_shows_a_gradient_not_requested_never_as_pass(subset_results, tmp_path):
    import html5lib

    out = render([subset_results], tmp_path / "r.html")
    doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(out.read_text(encoding="utf-8"))
    rows = {row.find("th").text: row.findall("td") for row in doc.find(".//table[@id='overview']").iter("tr")
            if row.find("td") is not None}
    words = {b: ["".join(td.itertext()).split()[:2] for td in cells[1:]] for b, cells in rows.items()}
    assert words["numpy-float32"] == [["not", "requested"], ["not", "requested"], ["order", "·"]]
    assert words["nf-binary32"] == [["pass", "·"], ["pass", "·"], ["pass", "·"]]
    text = out.read_text(encoding="utf-8")
    assert "--gradients grad_bias" in text  # the finding's reproduce command


# --- the command line and the assertion ------------------------------------------------------

def test_check_gradients_overrides_the_case_file(capsys):
    code = main(["check", "examples/cancellation.npz", "--backend", "numpy-float32", "--gradients", "input,grad_weight",
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0  # the bias gradient, numpy's order finding, was not requested
    assert doc["case"]["gradients"] == ["grad_input", "grad_weight"]
    (r,) = doc["results"]
    assert r["requested"] == ["grad_input", "grad_weight"] and list(r["gradients"]) == ["grad_input", "grad_weight"]
    main(["check", "examples/cancellation.npz", "--backend", "numpy-float32", "--gradients", "bias"])
    table = capsys.readouterr().out
    assert "requesting only grad_bias" in table and "grad_input" not in table.split("-----")[-1]


@pytest.mark.parametrize("bad", ["grad_input,kernel", ",", "Input"])
def test_check_refuses_bad_gradient_names_in_one_line(bad, capsys):
    code = main(["check", "examples/cancellation.npz", "--backend", "numpy-float32", "--gradients", bad])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"difftest: error: --gradients {bad}: ") and "grad_input, grad_weight, grad_bias" in err


def test_the_check_help_describes_gradients(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "--gradients" in capsys.readouterr().out


def test_assert_within_bounds_names_the_request_and_its_replay(tmp_path):
    case = Case.load("examples/cancellation.npz", gradients=("grad_bias",))
    with pytest.raises(AssertionError) as info:
        assert_within_bounds(case, "numpy-float32", save_to=tmp_path)
    text = str(info.value)
    assert "requesting only grad_bias" in text
    assert reproduce_command(tmp_path / f"{case.case_id}.npz", "numpy-float32", ("grad_bias",)) in text
    assert Case.load(tmp_path / f"{case.case_id}.npz").gradients == ("grad_bias",)
    assert reproduce_command("c.npz", "x") == "difftest check c.npz --backend x"  # all three: as before
