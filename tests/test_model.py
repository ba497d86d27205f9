"""Whole models (``difftest model``): every Conv2d captured in one float64 pass, judged layer by
layer through the one pipeline, written as a result directory whose case files replay."""

import json
import subprocess
import sys
from pathlib import Path

import html5lib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from difftest.cli import main  # noqa: E402
from difftest.errors import DifftestError  # noqa: E402
from difftest.geometry import GRADIENTS  # noqa: E402
from difftest.model import capture, forward_backward, load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
#: torch's own note on the tiny model's even padding="same" kernel (the layer difftest skips)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def tiny():
    """A few convolutions of every kind a network has, on a 2×8×8 input: plain (with an in-place
    ReLU on its output), grouped and dilated, per-axis stride and padding, reflect padding and an
    asymmetric padding='same' (both skipped), a symmetric padding='same' (converted)."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
        nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0)),
        nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(6, 4, 3, padding="same"),
        nn.Conv2d(4, 2, 2, padding="same"),
    )


def not_a_module():
    return 42


TINY = f"{__name__}:tiny"  # importable as the test module is
TINY_SHAPE = "1,2,8,8"
JUDGED = ["0", "2", "3", "5"]
SKIPPED = {"4": "padding_mode 'reflect'", "6": "pads asymmetrically"}


def run_json(capsys, *args) -> tuple[int, dict]:
    code = main(["model", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny model judged by the NF reference and torch (JSON, exit code, result directory)."""
    out = tmp_path_factory.mktemp("tiny")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["model", TINY, "--input-shape", TINY_SHAPE, "--backend", "nf-binary32", "--backend",
                     "torch-cpu-float32", "--out", str(out), "--json"])
    return code, json.loads(buf.getvalue()), out


def test_the_json_has_exactly_the_documented_keys(tiny_run):
    code, doc, out = tiny_run
    assert set(doc) == {"model", "input_shape", "layers", "seconds"}
    assert doc["model"] == TINY and doc["input_shape"] == [1, 2, 8, 8] and doc["seconds"] > 0
    for layer in doc["layers"]:
        assert set(layer) == {"name", "geometry", "case_file", "results"}
        assert set(layer["geometry"]) == {"N", "C", "H", "W", "O", "kH", "kW", "stride", "padding", "dilation", "groups"}
        assert [r["backend"] for r in layer["results"]] == ["nf-binary32", "torch-cpu-float32"]
        for r in layer["results"]:
            assert set(r) == {"backend", "format", "gradients"} and r["format"] == "binary32"
            assert set(r["gradients"]) == set(GRADIENTS)
            for g in r["gradients"].values():
                assert set(g) == {"verdict", "max_ratio", "max_ratio_order_free", "violations", "violations_order_free",
                                  "sampled"}


def test_every_zero_padded_convolution_is_judged_and_the_others_are_skipped(tiny_run):
    code, doc, out = tiny_run
    assert [layer["name"] for layer in doc["layers"]] == JUDGED
    geometry = {layer["name"]: layer["geometry"] for layer in doc["layers"]}
    assert geometry["2"]["dilation"] == 2 and geometry["2"]["groups"] == 2 and geometry["2"]["padding"] == 2
    assert geometry["3"]["stride"] == [2, 1] and geometry["3"]["padding"] == [1, 0] and geometry["3"]["kW"] == 1
    assert geometry["5"]["padding"] == 1  # padding="same" with a 3×3 kernel: symmetric, converted
    model = json.loads((out / "model.json").read_text())
    skipped = {layer["name"]: layer["skipped"] for layer in model["layers"] if layer["skipped"]}
    assert set(skipped) == set(SKIPPED) and all(SKIPPED[k] in v for k, v in skipped.items())


def test_the_nf_reference_passes_every_layer_and_the_exit_code_follows_the_verdicts(tiny_run):
    code, doc, out = tiny_run
    verdicts = {r["backend"]: {g["verdict"] for g in r["gradients"].values()} for layer in doc["layers"]
                for r in layer["results"] if r["backend"] == "nf-binary32"}
    assert verdicts == {"nf-binary32": {"pass"}}
    every = {g["verdict"] for layer in doc["layers"] for r in layer["results"] for g in r["gradients"].values()}
    assert code == (0 if every == {"pass"} else 1)


def test_each_layers_case_file_replays_to_the_same_numbers_with_difftest_check(tiny_run, capsys):
    code, doc, out = tiny_run
    for layer in doc["layers"]:
        assert Path(layer["case_file"]).is_file() and Path(layer["case_file"]).parent == out / "cases"
        # the file says its values are rounded into the backend's format: no flag needed to replay
        assert main(["check", layer["case_file"], "--backend", "nf-binary32", "--json"]) == 0
        replayed = json.loads(capsys.readouterr().out)["results"][0]["gradients"]
        for g, mine in layer["results"][0]["gradients"].items():
            assert replayed[g]["verdict"] == mine["verdict"] and replayed[g]["max_ratio"] == mine["max_ratio"]


def test_the_captured_arrays_are_what_autograd_used(tmp_path):
    # the weight gradient torch computes from the captured input and output gradient is the one
    # autograd accumulated in the same pass (an in-place ReLU on a conv's output changes nothing)
    captures, n = capture(load_model(TINY, seed=3), (1, 2, 8, 8), seed=3)
    model = load_model(TINY, seed=3).double().eval()
    forward_backward(model, torch.from_numpy(np.random.default_rng(3).standard_normal((1, 2, 8, 8))), seed=3)
    assert n == 6 and [c.name for c in captures] == ["0", "2", "3", "4", "5", "6"]
    for c in captures:
        if c.skipped:
            continue
        module = model[int(c.name)]
        grad_w = torch.nn.grad.conv2d_weight(torch.from_numpy(c.input), module.weight.shape,
                                             torch.from_numpy(c.grad_output), stride=c.stride, padding=c.padding,
                                             dilation=c.dilation, groups=c.groups)
        np.testing.assert_allclose(grad_w.numpy(), module.weight.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_the_table_labels_extensions_and_skips_and_the_report_names_each_layer(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["model", TINY, "--input-shape", TINY_SHAPE, "--backend", "emu-tf32", "--layers", "^[0-4]$",
                 "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 1  # TF32 inputs: precision
    rows = {line.split()[0]: line for line in printed.out.splitlines() if line[:1].isdigit()}
    assert set(rows) == {"0", "2", "3", "4"}
    assert "(extension: dilation)" in rows["2"] and "(extension: per-axis stride, per-axis padding)" in rows["3"]
    assert "extension" not in rows["0"] and "skipped: padding_mode 'reflect'" in rows["4"]
    assert "precision" in rows["0"] and f"difftest check {out}/cases/0.npz --backend emu-tf32" in printed.out
    assert "ETA" in printed.err and "estimated" in printed.err
    text = (out / "report.html").read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)
    assert 'id="layers"' in text and "<b>extension</b> (dilation)" in text
    assert "Cases with dilation, per-axis padding, per-axis stride: the TorchLean bounds fold" in text
    for name in ("0", "2", "3"):
        assert f"<tr><th>{name}</th>" in text
    assert "layer <b>0</b> (the first that showed it)" in text
    assert f"difftest check {out}/cases/0.npz --backend emu-tf32</" in text  # no flag needed


def test_a_model_from_the_current_directory_runs_as_a_command(tmp_path):
    # as the console script runs: sys.path[0] is the script's directory, not the current one
    script = tmp_path / "difftest_script.py"
    script.write_text("import sys\nfrom difftest.cli import main\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, str(script), "model", "test_model:tiny", "--input-shape", TINY_SHAPE,
                        "--backend", "nf-binary32", "--layers", "^0$", "--out", str(tmp_path / "o"), "--json"],
                       cwd=HERE, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [layer["name"] for layer in json.loads(r.stdout)["layers"]] == ["0"]


def test_an_output_directory_holding_other_files_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["model", TINY, "--input-shape", TINY_SHAPE, "--backend", "nf-binary32", "--out", str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _torchvision():
    from difftest.model import import_torchvision

    try:
        return import_torchvision()
    except DifftestError as exc:
        pytest.skip(str(exc))


def test_resnet18_at_a_small_input_judges_the_selected_layers(tmp_path, capsys):
    _torchvision()
    code, doc = run_json(capsys, "resnet18", "--input-shape", "1,3,32,32", "--backend", "torch-cpu-float32",
                         "--layers", r"^(conv1|layer1\.0\.conv1|layer2\.0\.downsample\.0)$", "--out", str(tmp_path))
    assert [layer["name"] for layer in doc["layers"]] == ["conv1", "layer1.0.conv1", "layer2.0.downsample.0"]
    conv1, _, down = (layer["geometry"] for layer in doc["layers"])
    assert (conv1["C"], conv1["O"], conv1["kH"], conv1["stride"], conv1["padding"], conv1["H"]) == (3, 64, 7, 2, 3, 32)
    assert (down["kH"], down["stride"], down["C"], down["O"]) == (1, 2, 64, 128)
    assert code in (0, 1) and all(r["backend"] == "torch-cpu-float32" for layer in doc["layers"] for r in layer["results"])


@pytest.mark.parametrize("args, words", [
    (["no_such_model_xyz"], "no_such_model_xyz"),
    (["no_such_package_xyz.nets:make"], "cannot import no_such_package_xyz.nets"),
    ([f"{__name__}:no_such_factory"], "has no attribute no_such_factory"),
    ([f"{__name__}:not_a_module"], "not a torch.nn.Module"),
    ([TINY, "--input-shape", "1,2,8"], "--input-shape must be N,C,H,W"),
    ([TINY, "--input-shape", "1,2,0,8"], "--input-shape must be N,C,H,W"),
    ([TINY, "--input-shape", "1,5,8,8"], "the model failed on input shape 1,5,8,8"),
    ([TINY, "--input-shape", TINY_SHAPE, "--layers", "("], "--layers '(' is not a valid regular expression"),
    ([TINY, "--input-shape", TINY_SHAPE, "--layers", "^nothing$"], "matches none of the model's 6 convolutions"),
    ([TINY, "--input-shape", TINY_SHAPE, "--backend", "no-such-backend"], "no-such-backend"),
])
def test_a_bad_model_shape_or_regex_is_a_usage_error_with_a_clear_message(args, words, tmp_path, capsys):
    assert main(["model", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("difftest: error: ") and words in last and "Traceback" not in err
