"""Bad input gets a clear error naming what was wrong, and the CLI exits 2."""

import numpy as np
import pytest

from difftest.case import Case
from difftest.cli import main
from difftest.errors import CaseFileError, InvalidCase, NotRepresentable
from difftest.formats import BINARY16


def arrays(N=1, C=2, H=5, W=4, O=3, k=3, s=1, p=0):
    oh, ow = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return np.ones((N, C, H, W)), np.ones((O, C, k, k)), np.ones((N, O, oh, ow))


def test_a_valid_case_has_its_geometry():
    x, w, d = arrays(N=2, H=7, W=5, s=2, p=1)
    case = Case(x, w, d, stride=2, padding=1)
    assert (case.geometry.out_h, case.geometry.out_w) == (4, 3)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, w, d: (x[0], w, d), r"input must have rank 4 \(N, C, H, W\), got shape \(2, 5, 4\)"),
        (lambda x, w, d: (x, w[:, :1], d), r"weight has 1 input channels .* input has 2"),
        (lambda x, w, d: (x, w, d[:, :, :2]), r"grad_output has shape \(1, 3, 2, 2\); expected \(1, 3, 3, 2\)"),
        (lambda x, w, d: (x.astype(str), w, d), r"input must hold real numbers"),
    ],
)
def test_wrong_ranks_and_shapes_say_which_tensor_and_what_was_expected(mutate, message):
    with pytest.raises(InvalidCase, match=message):
        Case(*mutate(*arrays()))


def test_stride_and_padding_are_checked():
    with pytest.raises(InvalidCase, match="stride must be >= 1"):
        Case(*arrays(), stride=0)
    with pytest.raises(InvalidCase, match="padding must be >= 0"):
        Case(*arrays(), padding=-1)
    with pytest.raises(InvalidCase, match="stride must be an integer"):
        Case(*arrays(), stride=1.5)


def test_a_kernel_larger_than_the_padded_input_is_refused():
    x, w = np.ones((1, 1, 2, 6)), np.ones((1, 1, 5, 1))
    with pytest.raises(InvalidCase, match="kernel height 5 exceeds the padded input height 2"):
        Case(x, w, np.ones((1, 1, 1, 6)), padding=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    x, w, d = arrays()
    w[1, 0, 2, 1] = bad
    with pytest.raises(InvalidCase, match=r"weight\[1, 0, 2, 1\] = .* is not finite"):
        Case(x, w, d)


def test_values_beyond_the_supported_magnitude_are_refused():
    x, w, d = arrays()
    d[0, 0, 0, 0] = 2.0**500
    with pytest.raises(InvalidCase, match="exceeds the supported magnitude"):
        Case(x, w, d)


def test_non_representable_values_name_the_first_offending_element():
    x, w, d = arrays()
    x[0, 1, 2, 3] = 0.1
    with pytest.raises(NotRepresentable, match=r"input\[0, 1, 2, 3\] = 0.1 is not representable in binary32"):
        Case(x, w, d)


def test_round_inputs_rounds_and_sets_eps_to_the_exact_maximal_rounding_error():
    x, w, d = arrays()
    x[0, 0, 0, 0] = 0.1
    w[0, 0, 0, 0] = 1 + 2.0**-12  # a tie in binary16: rounds to 1, error 2^-12
    case = Case(x, w, d, format=BINARY16, round_inputs=True, eps_grad_output=0.5)
    rt = case.runtime()
    assert rt.input[0, 0, 0, 0] == float(np.float16(0.1))
    assert rt.eps_input == abs(float(np.float16(0.1)) - 0.1)
    assert rt.eps_weight == 2.0**-12 and rt.weight[0, 0, 0, 0] == 1.0
    assert rt.eps_grad_output == 0.5  # representable: the given eps stays
    assert case.input[0, 0, 0, 0] == 0.1  # the spec values are kept


def test_eps_must_be_finite_and_non_negative():
    with pytest.raises(InvalidCase, match="eps_input must be finite and >= 0"):
        Case(*arrays(), eps_input=-1.0)


def test_case_files_round_trip(tmp_path):
    x, w, d = arrays(s=2, p=1)
    case = Case(x, w, d, stride=2, padding=1, format=BINARY16, eps_weight=0.25)
    loaded = Case.load(case.save(tmp_path / "c.npz"))
    assert loaded.describe() == case.describe()
    assert np.array_equal(loaded.input, case.input)


def _write(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_corrupt_incomplete_and_malformed_files_get_clear_errors(tmp_path):
    with pytest.raises(CaseFileError, match="does not exist"):
        Case.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CaseFileError, match="not a readable case file"):
        Case.load(tmp_path / "junk.npz")
    x, w, d = arrays()
    with pytest.raises(CaseFileError, match="lacks grad_output, padding"):
        Case.load(_write(tmp_path / "inc.npz", input=x, weight=w, stride=1))
    with pytest.raises(CaseFileError, match=r"stride must be an integer or a pair \[h, w\]"):
        Case.load(_write(tmp_path / "s.npz", input=x, weight=w, grad_output=d, stride=[1, 1, 1], padding=0))
    with pytest.raises(CaseFileError, match="not a readable case file"):
        Case.load(_write(tmp_path / "o.npz", input=np.array([object()]), weight=w, grad_output=d, stride=1, padding=0))
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes((_write(tmp_path / "ok.npz", input=x, weight=w, grad_output=d, stride=1, padding=0)).read_bytes()[:200])
    with pytest.raises(CaseFileError):
        Case.load(truncated)


def test_the_cli_exits_2_with_a_one_line_error_for_bad_input(tmp_path, capsys):
    x, w, d = arrays()
    x[0, 0, 0, 0] = 0.1
    path = _write(tmp_path / "bad.npz", input=x, weight=w, grad_output=d, stride=1, padding=0)
    assert main(["check", str(path), "--backend", "nf-binary32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difftest: error: input[0, 0, 0, 0] = 0.1 is not representable") and "--round-inputs" in err
    assert main(["check", str(tmp_path / "nope.npz"), "--backend", "nf-binary32"]) == 2
    assert main(["check", str(path), "--backend", "no-such-backend", "--round-inputs"]) == 2
    assert "unknown backend 'no-such-backend'" in capsys.readouterr().err
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04garbage")
    assert main(["bounds", str(tmp_path / "z.npz"), "--out", str(tmp_path / "o.npz")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["check", str(path)])  # --backend is required
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["bounds", str(path), "--format", "float33", "--out", "x.npz"])
    assert exc.value.code == 2


def test_the_cli_says_a_directory_is_not_a_case_file(tmp_path, capsys):
    assert main(["check", str(tmp_path), "--backend", "nf-binary32"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a directory, not a case file" in err and "does not exist" not in err


@pytest.mark.parametrize("content", ["random bytes", "object arrays"])
def test_the_cli_calls_a_garbage_npz_unreadable_without_talking_about_pickles(tmp_path, content, capsys):
    path = tmp_path / "garbage.npz"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    else:
        x, w, d = arrays()
        _write(path, input=np.array([object()]), weight=w, grad_output=d, stride=1, padding=0)
    for command in (["check", str(path), "--backend", "nf-binary32"], ["bounds", str(path), "--out", str(tmp_path / "b.npz")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"difftest: error: {path} is not a readable case file") and len(err.splitlines()) == 1
        assert "pickle" not in err.lower()
