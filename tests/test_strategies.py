"""The public strategies yield valid cases of representable values, and the patterns they promise."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from difftest import strategies as dst
from difftest.case import Case
from difftest.catalogue import FAMILIES, LAYERS, largest_size, smallest_size
from difftest.check import exact_gradients
from difftest.formats import PRESETS, Format
from difftest.geometry import Geometry
from difftest.probes import probe_case

FORMATS = list(PRESETS.values())


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@settings(max_examples=25)
@given(data=st.data())
def test_cases_hold_only_values_of_their_format_and_valid_geometries(fmt, data):
    limits = dst.Limits(max_batch=2, max_channels=3, max_size=6)
    case = data.draw(dst.cases(fmt, limits=limits))
    for a in (case.input, case.weight, case.grad_output):
        assert fmt.representable_array(a).all()
        assert np.all(np.abs(a) < fmt.max_finite)
    g = case.geometry
    assert g.dh * (g.kH - 1) + 1 <= g.H + 2 * g.ph and g.dw * (g.kW - 1) + 1 <= g.W + 2 * g.pw
    assert g.C <= 3 and g.O <= 3 and g.N <= 2


@pytest.mark.parametrize("family", ["normal", "uniform", "log_uniform", "integers", "powers_of_two", "subnormals", "near_ties", "values"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@settings(max_examples=30)
@given(data=st.data())
def test_every_value_family_is_representable(fmt, family, data):
    x = data.draw(getattr(dst, family)(fmt))
    assert fmt.representable_array(np.array([x]))[0]


@given(dst.subnormals(dst.BINARY32))
def test_subnormals_reach_below_the_normal_range(x):
    assert abs(x) < 2.0**-125 + 2.0**-126


@settings(max_examples=20)
@given(data=st.data())
def test_cancellation_puts_adjacent_opposite_giants_early_in_each_channels_fold(data):
    fmt = dst.BINARY32
    shape = (2, 3, 4, 5)
    a = data.draw(dst.cancellation(fmt, shape))
    flat = a.transpose(1, 0, 2, 3).reshape(3, -1)
    for row in flat:
        big = np.argmax(np.abs(row))
        assert big <= 7 and row[big + 1] == -row[big] or row[big - 1] == -row[big]
        small = np.delete(row, [big, big + 1] if row[big + 1] == -row[big] else [big - 1, big])
        assert np.all(np.abs(small) < np.abs(row[big]) * 2.0**-fmt.prec)  # below ulp(B)/2: lost next to B


@settings(max_examples=20)
@given(dst.geometries(dst.Limits(max_batch=3, max_channels=5, max_size=9, max_kernel=4, max_stride=3, max_padding=3,
                                 max_dilation=2)))
def test_geometries_respect_their_limits(g):
    assert 1 <= g.N <= 3 and 1 <= g.C <= 5 and 1 <= g.O <= 5 and g.kH <= 4 and g.kW <= 4
    assert 1 <= g.sh <= 3 and 1 <= g.sw <= 3 and g.ph <= 3 and g.pw <= 3 and 1 <= g.dh <= 2 and 1 <= g.dw <= 2
    assert g.C % g.groups == 0 and g.O % g.groups == 0


@pytest.mark.parametrize("family", dst.FAMILIES)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_seeded_arrays_of_every_family_are_representable_and_reproducible(fmt, family):
    a = dst.seeded_array(fmt, (3, 4, 5, 6), family, seed=7, sparsity=0.5)
    assert a.shape == (3, 4, 5, 6) and fmt.representable_array(a).all()
    assert np.all(np.abs(a) < fmt.max_finite)
    assert np.array_equal(a, dst.seeded_array(fmt, (3, 4, 5, 6), family, seed=7, sparsity=0.5))


# --- arguments are checked when a strategy is built -----------------------------------------

SHAPE = (1, 2, 3, 3)
GEOMETRY = Geometry(N=1, C=2, H=3, W=3, O=2, kH=2, kW=2, stride=1, padding=0)

#: Every public builder taking a format, called with only the format varying.
WITH_FORMAT = {
    "format_values": lambda fmt: dst.format_values(fmt),
    "normal": lambda fmt: dst.normal(fmt),
    "uniform": lambda fmt: dst.uniform(fmt),
    "log_uniform": lambda fmt: dst.log_uniform(fmt),
    "integers": lambda fmt: dst.integers(fmt),
    "powers_of_two": lambda fmt: dst.powers_of_two(fmt),
    "subnormals": lambda fmt: dst.subnormals(fmt),
    "near_ties": lambda fmt: dst.near_ties(fmt),
    "values": lambda fmt: dst.values(fmt),
    "cancellation": lambda fmt: dst.cancellation(fmt, SHAPE),
    "constant_blocks": lambda fmt: dst.constant_blocks(fmt, SHAPE),
    "seeded_array": lambda fmt: dst.seeded_array(fmt, SHAPE, "normal", seed=0),
    "seeded": lambda fmt: dst.seeded(fmt, SHAPE),
    "tensors": lambda fmt: dst.tensors(fmt, SHAPE),
    "structured": lambda fmt: dst.structured(fmt, GEOMETRY),
    "cases": lambda fmt: dst.cases(fmt),
}

#: Every public builder taking limits, called with only the limits varying.
WITH_LIMITS = {
    "geometries": lambda limits: dst.geometries(limits),
    "log_uniform": lambda limits: dst.log_uniform(dst.BINARY32, limits=limits),
    "values": lambda limits: dst.values(dst.BINARY32, limits),
    "cancellation": lambda limits: dst.cancellation(dst.BINARY32, SHAPE, limits),
    "constant_blocks": lambda limits: dst.constant_blocks(dst.BINARY32, SHAPE, limits),
    "seeded_array": lambda limits: dst.seeded_array(dst.BINARY32, SHAPE, "normal", 0, limits=limits),
    "seeded": lambda limits: dst.seeded(dst.BINARY32, SHAPE, limits),
    "tensors": lambda limits: dst.tensors(dst.BINARY32, SHAPE, limits),
    "structured": lambda limits: dst.structured(dst.BINARY32, GEOMETRY, limits),
    "cases": lambda limits: dst.cases(dst.BINARY32, limits=limits),
}


@pytest.mark.parametrize("field", ["max_batch", "max_channels", "max_size", "max_kernel", "max_stride", "max_dilation"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3"])
def test_limits_reject_sizes_that_are_not_positive_integers(field, value):
    with pytest.raises(InvalidArgument, match=f"Limits.{field} must be an integer >= 1, got {value!r}"):
        dst.Limits(**{field: value})


@pytest.mark.parametrize("value", [-1, 1.0, False])
def test_limits_reject_a_padding_that_is_not_a_non_negative_integer(value):
    with pytest.raises(InvalidArgument, match="Limits.max_padding must be an integer >= 0"):
        dst.Limits(max_padding=value)


@settings(max_examples=5)
@given(dst.geometries(dst.Limits(max_batch=1, max_channels=1, max_size=1, max_kernel=1, max_stride=1, max_padding=0)))
def test_the_smallest_limits_are_valid_and_yield_the_one_by_one_geometry(g):
    assert g == Geometry(N=1, C=1, H=1, W=1, O=1, kH=1, kW=1, stride=1, padding=0)


@pytest.mark.parametrize("builder", WITH_LIMITS.values(), ids=WITH_LIMITS.keys())
def test_limits_arguments_must_be_limits(builder):
    with pytest.raises(InvalidArgument, match="limits must be a Limits"):
        builder({"max_kernel": 3})


@pytest.mark.parametrize("builder", WITH_FORMAT.values(), ids=WITH_FORMAT.keys())
def test_unknown_format_names_are_rejected_with_the_known_names(builder):
    with pytest.raises(InvalidArgument, match="fmt must be a Format or one of binary64, binary32, tf32, binary16, bfloat16"):
        builder("binary8")


@pytest.mark.parametrize("builder", WITH_FORMAT.values(), ids=WITH_FORMAT.keys())
def test_preset_names_are_accepted_wherever_a_format_is(builder):
    builder("binary16")


@pytest.mark.parametrize("fmt", [Format(10, 7, -100), Format(2, 24, None), Format(2, 64, -16445), 32],
                         ids=["decimal", "FLX", "wider-than-float64", "not-a-format"])
def test_formats_whose_values_float64_cannot_hold_are_rejected(fmt):
    with pytest.raises(InvalidArgument, match="fmt must be"):
        dst.cases(fmt)


@pytest.mark.parametrize("scale", [0, -1.0, math.inf, math.nan, True, "1"])
def test_normal_scale_must_be_a_finite_positive_number(scale):
    with pytest.raises(InvalidArgument, match="scale must be a finite number > 0"):
        dst.normal(dst.BINARY32, scale)


@pytest.mark.parametrize("lo, hi, name", [(math.nan, 1.0, "lo"), (-math.inf, 1.0, "lo"), (0.0, math.inf, "hi"), (1.0, 0.0, "hi"), (0, "1", "hi")])
def test_uniform_bounds_must_be_finite_with_lo_at_most_hi(lo, hi, name):
    with pytest.raises(InvalidArgument, match=f"{name} must be a finite number"):
        dst.uniform(dst.BINARY32, lo, hi)


@pytest.mark.parametrize("bound", [-1, 1.5, True])
def test_integers_bound_must_be_a_non_negative_integer(bound):
    with pytest.raises(InvalidArgument, match="bound must be an integer >= 0"):
        dst.integers(dst.BINARY32, bound)


@pytest.mark.parametrize("build", [
    lambda: dst.log_uniform(dst.BINARY32, max_exp=2.5),
    lambda: dst.log_uniform(dst.BINARY32, max_exp="3"),
    lambda: dst.format_values(dst.BINARY32, max_exp=4.0),
    lambda: dst.powers_of_two(dst.BINARY32, max_exp=1.5),
], ids=["log_uniform-float", "log_uniform-str", "format_values", "powers_of_two"])
def test_maximal_exponents_must_be_integers(build):
    with pytest.raises(InvalidArgument, match="max_exp must be an integer"):
        build()


def test_format_values_minimal_exponent_must_be_an_integer():
    with pytest.raises(InvalidArgument, match="min_exp must be an integer"):
        dst.format_values(dst.BINARY32, min_exp=0.5)


def test_powers_of_two_must_reach_up_to_at_least_the_smallest_subnormal():
    with pytest.raises(InvalidArgument, match="max_exp must be an integer >= -149"):
        dst.powers_of_two(dst.BINARY32, max_exp=-150)


def test_seeded_array_family_must_be_one_of_the_families():
    with pytest.raises(InvalidArgument, match="family must be one of mixed, normal, uniform, .*, got 'gauss'"):
        dst.seeded_array(dst.BINARY32, SHAPE, "gauss", seed=0)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, math.nan, "0.5"])
def test_seeded_array_sparsity_must_lie_in_the_half_open_unit_interval(sparsity):
    with pytest.raises(InvalidArgument, match=r"sparsity must be a number in \[0, 1\)"):
        dst.seeded_array(dst.BINARY32, SHAPE, "normal", seed=0, sparsity=sparsity)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_seeded_array_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(InvalidArgument, match="seed must be an integer >= 0"):
        dst.seeded_array(dst.BINARY32, SHAPE, "normal", seed=seed)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 3, 1), (1, 0, 3, 3), (1, 2, 3.0, 3), 4])
@pytest.mark.parametrize("builder", [dst.cancellation, dst.tensors], ids=["cancellation", "tensors"])
def test_tensor_shapes_must_be_four_positive_integers(builder, shape):
    with pytest.raises(InvalidArgument, match="shape must be a tuple of 4 positive integers"):
        builder(dst.BINARY32, shape)


@pytest.mark.parametrize("shape", [(2, 0), (2, -1), (2, 1.5), "abc", 4])
@pytest.mark.parametrize("build", [
    lambda shape: dst.arrays(shape, st.just(1.0)),
    lambda shape: dst.constant_blocks(dst.BINARY32, shape),
    lambda shape: dst.seeded(dst.BINARY32, shape),
    lambda shape: dst.seeded_array(dst.BINARY32, shape, "normal", seed=0),
], ids=["arrays", "constant_blocks", "seeded", "seeded_array"])
def test_array_shapes_must_be_tuples_of_positive_integers(build, shape):
    with pytest.raises(InvalidArgument, match="shape must be a tuple of positive integers"):
        build(shape)


def test_array_elements_must_be_a_strategy():
    with pytest.raises(InvalidArgument, match="elements must be a hypothesis strategy"):
        dst.arrays(SHAPE, 1.0)


def test_cases_geometry_must_be_a_strategy_not_a_geometry():
    with pytest.raises(InvalidArgument, match="geometry must be a strategy of Geometry"):
        dst.cases(geometry=GEOMETRY)


def test_cases_tensor_must_be_a_value_strategy_or_a_function():
    with pytest.raises(InvalidArgument, match="tensor must be a value strategy or a function"):
        dst.cases(tensor=1.0)


def test_structured_needs_a_geometry():
    with pytest.raises(InvalidArgument, match="g must be a Geometry"):
        dst.structured(dst.BINARY32, (1, 2, 3, 3))


@settings(max_examples=10)
@given(data=st.data())
def test_cases_take_a_value_strategy_for_their_tensors(data):
    case = data.draw(dst.cases("binary16", tensor=dst.integers("binary16", 4), limits=dst.Limits(max_size=4)))
    for a in (case.input, case.weight, case.grad_output):
        assert np.all(np.abs(a) <= 4) and np.array_equal(a, np.round(a))


# --- the general geometry: groups, dilation, per-axis stride and padding ------------------------

QUICK = dst.Limits(max_batch=2, max_channels=3, max_size=6, max_kernel=3)  # the quick profile's


def _sample(strategy, n: int) -> list:
    """``n`` draws of ``strategy`` from hypothesis's derandomised generation (the same every run)."""
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(v):
        out.append(v)

    collect()
    return out


def test_fuzzed_geometries_reach_every_generalisation_and_stay_mostly_plain():
    drawn = _sample(dst.geometries(QUICK), 300)
    reached = {
        "grouped": [g for g in drawn if g.groups > 1],
        "depthwise": [g for g in drawn if g.groups > 1 and g.Cg == 1],
        "dilated": [g for g in drawn if g.dilation != 1],
        "per-axis stride": [g for g in drawn if g.sh != g.sw],
        "per-axis padding": [g for g in drawn if g.ph != g.pw],
        "kH != kW": [g for g in drawn if g.kH != g.kW],
    }
    assert all(reached.values()), {k: len(v) for k, v in reached.items()}
    assert sum(g.plain for g in drawn) > len(drawn) / 2  # most still the spec's own geometry


@pytest.mark.parametrize("needs", [
    lambda g: g.C >= 2 and g.kH >= 2 and g.stride == 2,
    lambda g: g.groups > 1,
    lambda g: g.dilation != 1,
    lambda g: g.sh != g.sw,
    lambda g: g.ph != g.pw,
], ids=["plain-suffices", "groups", "dilation", "stride-axes", "padding-axes"])
def test_shrinking_takes_away_every_generalisation_a_failure_does_not_need(needs):
    g = find(dst.geometries(QUICK), needs, settings=settings(max_examples=2000, database=None, derandomize=True))
    kept = [f for f in ("groups", "dilation", "stride", "padding") if _without(g, f) != g]
    assert len(kept) <= 1, g  # at most the one generalisation the failure needs
    for feature in kept:
        assert not needs(_without(g, feature)), (feature, g)


def _without(g: Geometry, feature: str) -> Geometry:
    """``g`` less one generalisation: one group, no dilation, or the height's stride or padding on
    both axes (the channels and sizes kept)."""
    fields = dict(g.__dict__)
    fields[feature] = {"groups": 1, "dilation": 1, "stride": g.sh, "padding": g.ph}[feature]
    return Geometry(**{k: fields[k] for k in ("N", "C", "H", "W", "O", "kH", "kW", "stride", "padding", "dilation",
                                               "groups")})


def test_limits_without_room_for_generalisations_give_only_plain_geometries():
    limits = dst.Limits(max_channels=1, max_stride=1, max_padding=0, max_dilation=1)
    assert all(g.plain for g in _sample(dst.geometries(limits), 100))


def test_structured_tensors_fit_a_grouped_dilated_per_axis_geometry():
    g = Geometry(N=2, C=4, H=6, W=5, O=6, kH=3, kW=2, stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2)
    for x, w, d in _sample(dst.structured(dst.BINARY32, g), 20):
        assert (x.shape, w.shape, d.shape) == (g.input_shape, g.weight_shape, g.grad_output_shape)
        Case(x, w, d, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)


def _family(g: Geometry) -> str:
    """The catalogue family of the layer a realistic geometry came from."""
    (family,) = {layer.family for layer in LAYERS.values()
                 if (layer.C, layer.O, layer.kH, layer.kW, layer.stride, layer.padding, layer.dilation, layer.groups)
                 == (g.C, g.O, g.kH, g.kW, g.stride, g.padding, g.dilation, g.groups)}
    return family


def test_realistic_draws_reach_every_family_of_the_catalogue():
    drawn = _sample(dst.realistic_geometries(2_000_000), 200)
    assert {_family(g) for g in drawn} == set(FAMILIES)


def test_depthwise_grouped_dilated_and_asymmetric_layers_are_a_stratum_each():
    classes = dst.layer_classes(LAYERS.values())
    for family in FAMILIES[1:]:
        assert [layer.name for layer in classes[(family,)]] == [n for n, layer in LAYERS.items() if layer.family == family]
    assert all(key[0] == "dense" and len(key) == 4 for key in classes if len(key) != 1)


def test_the_catalogue_holds_the_general_layers_real_networks_run():
    families = {f: [layer for layer in LAYERS.values() if layer.family == f] for f in FAMILIES}
    assert all(layer.groups == layer.C == layer.O for layer in families["depthwise"])
    assert {layer.stride for layer in families["depthwise"]} == {1, 2}
    assert any(layer.groups == 32 for layer in families["grouped"])
    assert {layer.dilation for layer in families["dilated"]} >= {2, 4, 12, 24, 36}
    assert all(layer.padding == layer.dilation for layer in families["dilated"] if layer.k == 3)
    assert {layer.k for layer in families["asymmetric"]} >= {(1, 7), (7, 1)}
    assert len(families["dense"]) == 53 and len(LAYERS) == 74  # the 53 of the first catalogue, 21 general ones


@pytest.mark.parametrize("name", LAYERS)
def test_every_catalogue_layer_is_a_valid_case_from_its_smallest_to_its_largest_affordable_size(name):
    layer = LAYERS[name]
    top = largest_size(layer, 1, 2_000_000) or smallest_size(layer)
    for size in {smallest_size(layer), top}:
        g = layer.geometry(1, size)
        case = Case(np.zeros(g.input_shape), np.zeros(g.weight_shape), np.zeros(g.grad_output_shape),
                    stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        assert case.geometry == g and (g.out_h >= 2 or size == layer.H)


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(dst.realistic_cases(dst.BINARY32, 2_000_000, layers=[n for n, layer in LAYERS.items() if layer.family != "dense"]))
def test_realistic_cases_of_general_layers_keep_the_layer_geometry_and_format_values(case):
    g = case.geometry
    assert _family(g) != "dense" and g.macs <= 2_000_000
    assert all(dst.BINARY32.representable_array(a).all() for a in (case.input, case.weight, case.grad_output))


#: Layers of each general family at a small size (interior entries read every tap), with the probes to try.
GENERAL_PROBES = [
    ("mobilenet_v2.features.1.depthwise", 6, ("single_term", "swamping", "cancellation", "subnormals")),
    ("resnext50_32x4d.layer1.0.conv2", 6, ("single_term", "swamping")),
    ("deeplabv3_mobilenet_v3_large.backbone.13.block.1.0", 9, ("single_term", "swamping")),
    ("deeplabv3_resnet50.backbone.layer3.1.conv2", 5, ("single_term",)),
    ("inception_v3.Mixed_6b.branch7x7_2.conv", 7, ("single_term",)),
]


@pytest.mark.parametrize("name, size, kinds", GENERAL_PROBES, ids=[p[0] for p in GENERAL_PROBES])
def test_probes_in_grouped_and_dilated_layers_are_what_the_probed_entries_sum(name, size, kinds):
    """grad_input's probe of channel ``c`` fills ``w[c's group's output channels, c mod C/G]`` (a
    depthwise layer's own taps), δ[0] = 1: an interior entry sums exactly that pattern; grad_weight's
    probe fills ``x[:, c]`` with δ = 1 in the first output channel of ``c``'s group: the centre tap
    (reading every position) sums exactly ``x[:, c]``."""
    for kind in kinds:
        case = probe_case(name, size, kind, "grad_input")
        g = case.geometry
        gi = exact_gradients(case)["grad_input"].nearest
        for c in range(0, g.C, max(1, g.C // 4)):
            group, local = divmod(c, g.Cg)
            fold = case.weight[group * g.Og:(group + 1) * g.Og, local].ravel()
            if kind == "single_term":
                assert np.count_nonzero(fold) == 1, (kind, c)
            assert gi[0, c, size // 2, size // 2] == float(sum(Fraction(v) for v in fold)), (kind, c)
        case = probe_case(name, size, kind, "grad_weight")
        gw = exact_gradients(case)["grad_weight"].nearest
        for c in range(0, g.C, max(1, g.C // 4)):
            o = c // g.Cg * g.Og
            assert (case.grad_output[:, o] == 1).all()
            assert gw[o, c % g.Cg, g.kH // 2, g.kW // 2] == float(sum(Fraction(v) for v in case.input[:, c].ravel()))
