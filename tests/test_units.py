"""terrazzo.units.parse_quantity: numbers with units at the edges, SI inside."""

from __future__ import annotations

import math

import pytest

from terrazzo.units import UnitError, parse_quantity


@pytest.mark.parametrize(
    ("raw", "dimension", "unit", "expected"),
    [
        ("300 ms", "time", "s", 0.3),
        ("300ms", "time", "s", 0.3),
        ("  2.5 s ", "time", "s", 2.5),
        ("1.5 min", "time", "s", 90.0),
        ("2 h", "time", "s", 7200.0),
        ("250 us", "time", "s", 250e-6),
        ("250 µs", "time", "s", 250e-6),
        ("40 ns", "time", "s", 40e-9),
        ("1 s", "time", "ms", 1000.0),
        ("1e3 ms", "time", "s", 1.0),
        (".5 s", "time", "s", 0.5),
        ("300 MS", "time", "s", 0.3),  # units are case-insensitive
        ("2 KiB", "bytes", "b", 2048.0),
        ("3 MiB", "bytes", "b", 3 * 2**20),
        ("1 GiB", "bytes", "b", 2**30),
        ("5 MB", "bytes", "b", 5e6),
        ("4 kb", "bytes", "b", 4000.0),
        ("1 GB", "bytes", "kib", 1e9 / 1024),
        ("400 Gb/s", "bits_per_s", "gbit/s", 400.0),
        ("400 Gbps", "bits_per_s", "gbit/s", 400.0),
        ("100 Mbit/s", "bits_per_s", "gbit/s", 0.1),
        ("1.6 Tbit/s", "bits_per_s", "gbit/s", 1600.0),
        ("900 GByte/s", "bytes_per_s", "gbyte/s", 900.0),
        ("1 GiB/s", "bytes_per_s", "byte/s", 2.0**30),
        ("120 rpm", "rate", "/s", 2.0),
        ("30 /min", "rate", "/s", 0.5),
        ("30/min", "rate", "/s", 0.5),
        ("3600 /h", "rate", "/s", 1.0),
        ("5 rps", "rate", "/s", 5.0),
        ("8k", "tokens", "tokens", 8000.0),
        ("2 ktok", "tokens", "tokens", 2000.0),
        ("512 tok", "tokens", "tokens", 512.0),
        ("12", "time", "s", 12.0),  # a string without a unit is in the field's unit
        ("12", "bytes", "kib", 12.0),
        ("-5 s", "time", "s", -5.0),  # sign is kept; range checks belong to the fields
        ("+2e-3 s", "time", "ms", 2.0),
    ],
)
def test_converts_to_field_unit(raw: str, dimension: str, unit: str, expected: float) -> None:
    assert parse_quantity(raw, dimension, unit) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("raw", [0, 7, 3.25, -1.5, 10**6])
def test_bare_numbers_pass_through_in_field_unit(raw: float) -> None:
    got = parse_quantity(raw, "time", "ms")
    assert got == float(raw)
    assert type(got) is float


def test_bare_number_is_not_scaled_even_for_odd_field_units() -> None:
    # a bare number is already in the field's unit: 3 (KiB) stays 3, it is not 3 bytes -> KiB
    assert parse_quantity(3, "bytes", "kib") == 3.0


def test_bytes_unit_in_time_field_names_its_dimension() -> None:
    with pytest.raises(UnitError) as info:
        parse_quantity("5 MB", "time", "s")
    msg = str(info.value)
    assert "'MB' is a unit of bytes" in msg
    assert "this field takes time" in msg
    assert "ms" in msg  # lists the units it would accept


def test_time_unit_in_bytes_field_names_its_dimension() -> None:
    with pytest.raises(UnitError, match=r"'ms' is a unit of time; this field takes bytes"):
        parse_quantity("30 ms", "bytes", "b")


def test_rate_unit_in_time_field() -> None:
    with pytest.raises(UnitError, match=r"is a unit of rate"):
        parse_quantity("3 rpm", "time", "s")


def test_unknown_unit() -> None:
    with pytest.raises(UnitError, match=r"unknown unit 'parsecs'; this field takes time"):
        parse_quantity("5 parsecs", "time", "s")


@pytest.mark.parametrize("raw", ["fast", "", "   ", "ms 300", "nan", "1,000 s", "s"])
def test_unreadable_strings(raw: str) -> None:
    with pytest.raises(UnitError):
        parse_quantity(raw, "time", "s")


def test_unreadable_string_message_suggests_form() -> None:
    with pytest.raises(UnitError, match=r"cannot read 'fast' as a quantity; write a number of s, e.g. '12 s'"):
        parse_quantity("fast", "time", "s")


@pytest.mark.parametrize("raw", [True, False])
def test_booleans_refused(raw: bool) -> None:
    with pytest.raises(UnitError, match=r"expected a number of s"):
        parse_quantity(raw, "time", "s")


@pytest.mark.parametrize("raw", [None, [1], {"value": 1}, b"5 s", (1,)])
def test_other_types_refused(raw: object) -> None:
    with pytest.raises(UnitError, match=r"expected a number of ms, got"):
        parse_quantity(raw, "time", "ms")


def test_unit_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into ValidationError, which the spec layer maps
    assert issubclass(UnitError, ValueError)


def test_huge_exponent_is_infinite_not_an_exception() -> None:
    assert math.isinf(parse_quantity("1e400 s", "time", "s"))


def test_gigabytes_per_second_not_read_as_gigabits() -> None:
    """'GB/s' is gigabytes per second (the catalog's own bw_gbyte_s); for a Gbit/s field it is 8x
    more than 'Gb/s'. Reading it as 50 Gbit/s silently under-states the bandwidth eight times."""
    try:
        got = parse_quantity("50 GB/s", "bits_per_s", "gbit/s")
    except UnitError as exc:
        assert "byte" in str(exc)
    else:
        assert got == pytest.approx(400.0), f"'50 GB/s' read as {got} Gbit/s"
