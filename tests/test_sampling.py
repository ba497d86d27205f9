"""Sampled checks (``--sample N``, difftest.sampling): judging chosen entries is the full check's
judgement of those entries, the entries are chosen where real-shape bugs live, and a sampled
result says so everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import difftest.strategies as dst
from difftest.case import Case
from difftest.check import bounds_arrays, check_case, exact_gradients, sample_of
from difftest.compare import error_bounds
from difftest.cli import main
from difftest.errors import DifftestError
from difftest.estimate import CaseTooLarge, estimate
from difftest.formats import BINARY32
from difftest.geometry import GRADIENTS, Geometry
from difftest.model import layer_plan
from difftest.outcome import GradientResult
from difftest.sampling import DEFAULT_SIZE, STRATA, TERMS_PER_ENTRY, choose, judged_count
from difftest.verdicts import SEVERITY

#: A backend of each format, judged full and sampled in the property test.
BACKEND_OF = {"binary32": "numpy-float32", "binary64": "numpy-float64", "binary16": "numpy-float16",
              "bfloat16": "numpy-bfloat16"}


def _full_and_sampled(case: Case, n: int, seed: int):
    backend = BACKEND_OF[case.format.name]
    full = check_case(case, [backend], max_memory=None)[0]
    sampled, nf = check_case(case, [backend, f"nf-{case.format.name}"], max_memory=None, sample=n, seed=seed)
    assert nf.verdict == "pass", nf.gradients  # the NF reference passes its sampled entries too
    return full, sampled


@pytest.mark.parametrize("fmt", list(BACKEND_OF))
@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_sampled_check_equals_the_full_check_on_every_judged_entry(fmt, data):
    """Exact values, NF values, TorchLean bounds, the backend's errors: bit for bit. The
    order-free bound's Σ|a·b| is one float64 evaluation in some order, inflated into a sure bound
    (difftest.orderfree): the sampled check sums each entry's terms in another order, so its
    order-free bound agrees to that inflation (relative 2·K·2^-52), not bit for bit; every claim
    (entry beyond a bound, verdict) agrees."""
    case = data.draw(dst.cases(fmt), label="case")
    n = data.draw(st.integers(1, 12), label="sample")
    seed = data.draw(st.integers(0, 3), label="seed")
    chosen = sample_of(case, n, seed)
    full_arrays = bounds_arrays(case, max_memory=None)
    if chosen is None:  # n covers every entry: the full check itself
        assert bounds_arrays(case, max_memory=None, sample=n, seed=seed).keys() == full_arrays.keys()
        return
    part = bounds_arrays(case, max_memory=None, sample=n, seed=seed)
    full, sampled = _full_and_sampled(case, n, seed)
    exact = exact_gradients(case)
    assert full.verdict not in ("error",) and sampled.requested == full.requested
    for g in case.gradients:
        index = part[f"{g}_index"]
        assert np.array_equal(index, chosen[g].index)
        for k in ("exact", "nf", "bound"):
            assert np.array_equal(full_arrays[f"{g}_{k}"].ravel()[index], part[f"{g}_{k}"], equal_nan=True), (g, k)
        of_full, of_part = full_arrays[f"{g}_bound_order_free"].ravel()[index], part[f"{g}_bound_order_free"]
        K = max(1, chosen[g].terms)
        slack = 4 * K * 2.0**-52
        with np.errstate(invalid="ignore"):
            close = (of_full == of_part) | (np.abs(of_full - of_part) <= slack * np.maximum(of_full, of_part) + 2 * K * 2.0**-1074)
        assert close.all(), (g, of_full[~close], of_part[~close])
        fe, se = full.gradients[g].entries, sampled.gradients[g].entries
        if fe is None:
            assert se is None and full.gradients[g].verdict == sampled.gradients[g].verdict
            continue
        assert np.array_equal(fe.error.ravel()[index], se.error, equal_nan=True)
        assert np.array_equal(fe.bound.ravel()[index], se.bound, equal_nan=True)
        gr = sampled.gradients[g]
        assert gr.sampled["judged"] == index.size and gr.sampled["total"] == int(np.prod(case.geometry.shape_of(g)))
        # the claims on the judged entries are the full check's claims there
        fr = full.gradients[g]
        assert SEVERITY[gr.verdict] <= SEVERITY[fr.verdict]
        if np.isfinite(full.outputs[g]).all():  # (a non-finite output's claim also needs the overflow reach)
            lower = error_bounds(np.asarray(full.outputs[g]), exact[g]).lower.ravel()[index]
            assert gr.violations == int(np.count_nonzero(lower > part[f"{g}_bound"]))
            assert gr.violations_order_free == int(np.count_nonzero(lower > of_part))
        # the worst entry is named by its place in the whole gradient, and holds the numbers found there
        flat = int(np.ravel_multi_index(gr.worst_index, case.geometry.shape_of(g)))
        assert flat in set(index.tolist())
        assert gr.worst["backend"] == float(np.ravel(full.outputs[g])[flat])


def faulty_conv(x, w, d, stride, padding):
    """torch's conv2d backward, but the last input-gradient row is zero on images of 1024+ rows:
    the kind of bug that lives only at real shapes (a tile edge, an index past a limit)."""
    import torch

    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.zeros(w.shape[0], dtype=xt.dtype, requires_grad=True)
    torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding).backward(torch.tensor(d))
    gi = xt.grad.numpy().copy()
    if gi.shape[2] >= 1024:
        gi[:, :, -1, :] = 0.0
    return gi, wt.grad.numpy(), bt.grad.numpy()


def _layer(H: int, W: int, C: int = 16, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    x = BINARY32.round_array(rng.standard_normal((1, C, H, W)))
    w = BINARY32.round_array(rng.standard_normal((C, C, 3, 3)) * 0.1)
    d = BINARY32.round_array(rng.standard_normal((1, C, H, W)) * 2.0**-4)
    return Case(x, w, d, stride=1, padding=1, format=BINARY32)


def test_a_fault_on_the_last_row_of_large_images_is_found_by_a_sampled_check_at_1282_by_722():
    pytest.importorskip("torch")
    small = check_case(_layer(64, 48), [(faulty_conv, "binary32")], sample=500)[0]
    assert small.verdict == "pass"  # the fault sleeps below 1024 rows
    big = _layer(1282, 722)
    result = check_case(big, [(faulty_conv, "binary32")], sample=2000, seed=0)[0]
    gi = result.gradients["grad_input"]
    assert gi.verdict == "precision" and gi.violations_order_free > 0
    assert gi.worst_index[2] == 1281  # the last row
    assert gi.sampled["judged"] == 2000 and gi.sampled["total"] == 16 * 1282 * 722
    assert gi.sampled["strata"]["edges"] > 0
    assert result.gradients["grad_weight"].verdict == "pass"


def test_the_strata_are_chosen_from_the_seed_within_the_count_and_the_term_budget():
    g = Geometry(2, 16, 1282, 722, 16, 3, 3, 1, 1)
    a, b, c = choose(g, n=3000, seed=1), choose(g, n=3000, seed=1), choose(g, n=3000, seed=2)
    for name in GRADIENTS:
        assert np.array_equal(a[name].index, b[name].index)
        index = a[name].index
        assert index.dtype == np.int64 and np.all(np.diff(index) > 0)  # sorted, no repeats
        assert 0 <= index[0] and index[-1] < int(np.prod(g.shape_of(name)))
        assert a[name].judged == judged_count(name, g, 3000)[0] <= 3000
        assert a[name].judged * a[name].terms <= max(3000 * TERMS_PER_ENTRY, a[name].terms)
        assert sum(a[name].strata.get(s, 0) for s in STRATA) == a[name].judged
    assert not np.array_equal(a["grad_input"].index, c["grad_input"].index)
    gi = a["grad_input"]
    assert not gi.by_cost and a["grad_weight"].by_cost  # a weight entry sums 2·1282·722 terms
    n, ch, h, w = np.unravel_index(gi.index, g.input_shape)
    corner = (h % 1281 == 0) & (w % 721 == 0)
    assert corner.sum() == gi.strata["corners"] == 2 * 16 * 4  # every plane's four corners
    assert ((h == 1281) | (w == 721) | (h == 0) | (w == 0)).sum() >= gi.strata["edges"]
    assert np.isin(h, [1023, 1024]).any() and np.isin(w, [511, 512]).any()  # the largest tiles first
    bias = a["grad_bias"]  # 16 entries of 2·1282·722 terms each: the term budget takes 6, the two ends first
    assert bias.judged == 3000 * TERMS_PER_ENTRY // (2 * 1282 * 722) == 6 and bias.by_cost
    assert {0, 15} <= set(bias.index.tolist())


def test_planted_probes_are_found_in_the_inputs_and_judged():
    from difftest.probes import probe_case

    case = probe_case("resnet18.layer1.0.conv1", 16, "single_term", "grad_input")  # δ[0] constant
    chosen = choose(case.geometry, n=300, seed=0, grad_output=case.grad_output)
    gi = chosen["grad_input"]
    assert gi.strata["probes"] > 0
    assert np.all(np.unravel_index(gi.index, case.geometry.input_shape)[0] == 0)  # one batch entry: all probed


def test_a_sample_that_covers_the_gradients_is_the_full_check():
    case = _layer(6, 5, C=2)
    assert sample_of(case, 10**6) is None
    r = check_case(case, ["numpy-float32"], sample=10**6)[0]
    assert all(gr.sampled is None for gr in r.gradients.values())


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "12"])
def test_a_bad_sample_size_is_refused(bad):
    with pytest.raises(DifftestError, match="--sample takes a whole number of entries >= 1"):
        check_case(_layer(6, 5, C=2), ["numpy-float32"], sample=bad)


def test_a_full_check_above_the_memory_limit_suggests_a_sample_with_its_estimate():
    g = Geometry(1, 512, 224, 224, 512, 3, 3, 1, 1)
    full = estimate(g)
    sampled = estimate(g, sample=DEFAULT_SIZE)
    assert sampled.peak_bytes < full.peak_bytes and sampled.seconds < full.seconds
    limit = (full.peak_bytes + sampled.peak_bytes) // 2
    from difftest.estimate import refuse_if_too_large

    with pytest.raises(CaseTooLarge, match=rf"--sample {DEFAULT_SIZE} \(sample= in Python\): about \d+ s"):
        refuse_if_too_large(full, limit, sampled, DEFAULT_SIZE)
    # difftest model samples such a layer (and only such a layer) unless told to sample every one
    assert layer_plan(g, 1, None, limit)[0] == DEFAULT_SIZE
    assert layer_plan(g, 1, None, None) == (None, full)
    assert layer_plan(g, 1, 100, None)[0] == 100
    assert layer_plan(Geometry(1, 2, 4, 4, 2, 3, 3, 1, 1), 1, 100, None)[0] is None  # 100 covers it: whole


def test_check_says_sampled_in_the_table_and_the_json(tmp_path, capsys):
    case = _layer(40, 30, C=4)
    path = tmp_path / "c.npz"
    case.save(path)
    assert main(["check", str(path), "--backend", "numpy-float32", "--sample", "50", "--seed", "3", "--no-isolate"]) == 0
    out = capsys.readouterr().out
    assert "sampled: 50 / 4,800" in out and "pass = no certain violation among the judged entries" in out
    assert "grad_input: 50 of 4,800 entries judged; " in out
    assert main(["check", str(path), "--backend", "numpy-float32", "--sample", "50", "--json", "--no-isolate"]) == 0
    doc = json.loads(capsys.readouterr().out)
    gi = doc["results"][0]["gradients"]["grad_input"]["sampled"]
    assert gi["judged"] == 50 and gi["total"] == 4800 and gi["size"] == 50 and sum(gi["strata"].values()) == 50
    assert main(["bounds", str(path), "--sample", "20", "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "b.npz") as z:
        assert z["grad_input_index"].shape == z["grad_input_exact"].shape == (20,)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_a_bad_sample_option_is_a_usage_error(tmp_path, capsys, value):
    path = tmp_path / "c.npz"
    _layer(6, 5, C=2).save(path)
    with pytest.raises(SystemExit) as exc:
        main(["check", str(path), "--backend", "numpy-float32", "--sample", value])
    assert exc.value.code == 2 and "--sample: takes a whole number of entries >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, words", [
    ("judged", 9, "judged must be at most total"),
    ("judged", "3", "judged must be an integer"),
    ("strata", [], "strata must be a JSON object"),
    ("by_cost", "yes", "by_cost must be true or false"),
])
def test_a_hostile_sampled_field_in_a_result_line_is_refused(field, value, words):
    d = {"verdict": "pass", "sampled": {"judged": 3, "total": 5, "strata": {"random": 3}, "by_cost": False}}
    d["sampled"][field] = value
    with pytest.raises(DifftestError, match=words):
        GradientResult.from_dict(d)
    assert GradientResult.from_dict({"verdict": "pass"}).sampled is None



def test_the_hardware_profile_draws_real_layers_at_their_real_sizes_with_training_batches():
    from hypothesis import find

    from difftest.campaign import PROFILES
    from difftest.catalogue import LAYERS

    hw = PROFILES["hardware"]
    assert hw.sample and hw.real_batch == 32 and "judged at 4096 sampled entries" in hw.description
    layer = LAYERS["resnet50.layer1.0.conv2"]
    drawn = find(dst.realistic_geometries(hw.max_macs, hw.real_batch, layers=[layer.name]),
                 lambda g: g.N >= 16 and g.H == layer.H, settings=settings(max_examples=500, database=None))
    assert drawn.H == drawn.W == 56 and drawn.N >= 16 and drawn.macs > 10**9


def test_a_campaign_judges_a_case_beyond_its_sample_at_sampled_entries_and_its_replay_samples_them(tmp_path):
    import dataclasses

    from difftest.campaign import PROFILES, Campaign, CampaignConfig
    from difftest.backends import get_backend
    from difftest.explain import reproduce_command, sampled_of

    profile = dataclasses.replace(PROFILES["hardware"], sample=300)
    campaign = Campaign(CampaignConfig([get_backend("numpy-float32")], profile=profile, seed=4, out=tmp_path))
    results = campaign.judge(_layer(40, 30, C=4), [get_backend("numpy-float32")])
    gi = results[0].gradients["grad_input"]
    assert gi.sampled["judged"] == 300 and gi.sampled["size"] == 300 and gi.sampled["seed"] == 4
    assert reproduce_command("c.npz", "numpy-float32", GRADIENTS, sampled_of(results[0].gradients)) == \
        "difftest check c.npz --backend numpy-float32 --sample 300 --seed 4"
    small = campaign.judge(_layer(4, 3, C=2), [get_backend("numpy-float32")])  # covered whole: the full check
    assert all(gr.sampled is None for gr in small[0].gradients.values())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
def test_a_sampled_model_says_so_in_its_table_json_results_and_report(tmp_path, capsys):
    pytest.importorskip("torch")
    from difftest.store import read_results
    from tests.test_model import TINY, TINY_SHAPE

    out = tmp_path / "m"
    assert main(["model", TINY, "--input-shape", TINY_SHAPE, "--backend", "nf-binary32", "--sample", "5",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "pass~" in table and "~: judged at sampled entries" in table and "--sample 5 --seed 0)" in table
    records = read_results(out)
    assert records and all(gr.sampled and gr.sampled["size"] == 5 for r in records for gr in r.gradients.values()
                           if gr.sampled is not None)
    assert any(gr.sampled for r in records for gr in r.gradients.values())
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "a gradient judged at sampled entries" in html and "sampled: 5 / " in html


def test_assert_within_bounds_takes_a_sample_and_its_failure_replays_it(tmp_path):
    import difftest

    pytest.importorskip("torch")
    case = _layer(1030, 12, C=2)
    assert difftest.assert_within_bounds(case, "torch-cpu-float32", sample=300).gradients["grad_input"].sampled
    with pytest.raises(AssertionError) as failed:
        difftest.assert_within_bounds(case, faulty_conv, sample=300, seed=2, save_to=tmp_path)
    text = str(failed.value)
    assert "grad_input" in text and "precision" in text and "sample=300, seed=2)" in text
