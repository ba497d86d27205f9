"""Mismatch text: ratios above 1 never read as 1; words agree with numbers."""

from hypothesis import given
from hypothesis import strategies as st

from difftest.explain import format_ratio, plural


@given(st.floats(min_value=1.0, max_value=1e6, exclude_min=True))
def test_a_ratio_above_one_never_prints_as_one_or_below(x):
    shown = format_ratio(x)
    assert float(shown) > 1 and shown != "1"


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_ratio_below_one_never_prints_as_one_or_above(x):
    assert float(format_ratio(x)) < 1


def test_the_issue_s_ratio_keeps_its_digits():
    assert format_ratio(1.0000000000000009) == "1.000000000000001" and format_ratio(1.0) == "1"


def test_counts_are_plural_only_when_not_one():
    assert (plural(1, "backend"), plural(2, "backend"), plural(1, "entry", "entries"), plural(0, "entry", "entries")) == (
        "1 backend", "2 backends", "1 entry", "0 entries")
