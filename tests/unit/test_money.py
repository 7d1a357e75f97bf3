"""Money is an integer count of nano-USD; conversions at the edges are exact."""

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.money import (
    MAX_NANOS,
    MoneyError,
    allocate_rounded,
    format_usd,
    nanos_to_usd,
    round_half_even_div,
    usd_to_nanos,
)


def test_one_nano_is_one_billionth_of_a_dollar():
    assert usd_to_nanos("0.000000001") == 1
    assert usd_to_nanos(Decimal("1")) == 1_000_000_000
    assert nanos_to_usd(1) == Decimal("1E-9")


def test_sub_nano_amounts_round_half_to_even():
    assert usd_to_nanos("0.0000000005") == 0
    assert usd_to_nanos("0.0000000015") == 2
    assert usd_to_nanos("0.0000000025") == 2


def test_exact_mode_refuses_amounts_finer_than_a_nano():
    with pytest.raises(MoneyError, match="finer than one nano"):
        usd_to_nanos("0.0000000001", exact=True)
    assert usd_to_nanos("0.45", exact=True) == 450_000_000


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "abc", "", True])
def test_non_numbers_are_refused(bad):
    with pytest.raises(MoneyError):
        usd_to_nanos(bad)


def test_amounts_beyond_the_limit_are_refused():
    with pytest.raises(MoneyError, match="exceeds the limit"):
        usd_to_nanos("1000000001")
    assert usd_to_nanos("1000000000") == MAX_NANOS < 2**63  # fits the store's BIGINT


def test_format_usd_has_no_exponent_and_no_trailing_zeros():
    assert format_usd(1) == "0.000000001"
    assert format_usd(450_000_000) == "0.45"
    assert format_usd(3_000_000_000) == "3"
    assert format_usd(0) == "0"
    assert format_usd(-1_500_000_000) == "-1.5"


def test_nanos_to_usd_refuses_floats():
    with pytest.raises(MoneyError):
        nanos_to_usd(1.0)  # type: ignore[arg-type]


@given(st.integers(min_value=-MAX_NANOS, max_value=MAX_NANOS))
def test_nanos_round_trip_through_decimal_exactly(nanos):
    assert usd_to_nanos(nanos_to_usd(nanos), exact=True) == nanos
    assert usd_to_nanos(format_usd(nanos), exact=True) == nanos


@given(st.integers(min_value=-(10**30), max_value=10**30), st.integers(min_value=1, max_value=10**18))
def test_round_half_even_div_matches_decimal_rounding(numerator, denominator):
    with localcontext() as ctx:
        ctx.prec = 80
        expected = (Decimal(numerator) / Decimal(denominator)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    assert round_half_even_div(numerator, denominator) == int(expected)


@given(st.lists(st.integers(min_value=0, max_value=10**24), min_size=1, max_size=8), st.integers(1, 10**15))
def test_allocated_parts_sum_to_the_rounded_total(parts, denominator):
    allocated = allocate_rounded(parts, denominator)
    assert sum(allocated) == round_half_even_div(sum(parts), denominator)
    for part, share in zip(parts, allocated, strict=True):
        assert part // denominator <= share <= part // denominator + 1
