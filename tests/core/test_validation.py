"""One helper per validation rule: the fraction and N:M rules, in config wording and in stage wording."""

from __future__ import annotations

import re

import pytest

from moeprune.errors import MoepruneError
from moeprune.params import check_fraction, check_nm, parse_nm


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999])
def test_fractions_in_range_come_back_as_floats(value: float) -> None:
    assert check_fraction(value) == value and isinstance(check_fraction(value, "sparsity"), float)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_a_fraction_out_of_range_names_the_rule_and_the_fix(value: float) -> None:
    with pytest.raises(ValueError, match=rf"^must be in \[0, 1\), got {value}$"):
        check_fraction(value)  # a config field: pydantic adds the location
    with pytest.raises(MoepruneError, match=rf"^sparsity {value} is outside \[0, 1\); pass a fraction such as 0.5$"):
        check_fraction(value, "sparsity")
    with pytest.raises(MoepruneError, match=r"^expert sparsity .* outside \[0, 1\); pass the fraction of experts"):
        check_fraction(value, "expert sparsity", "pass the fraction of experts to remove, e.g. 0.5")


def test_nm_patterns_parse_and_check() -> None:
    assert parse_nm("2:4") == (2, 4) and parse_nm("1:8", "--nm") == (1, 8)
    check_nm(2, 4, in_features=64)


@pytest.mark.parametrize(
    ("text", "config_message", "flag_message"),
    [
        ("2-4", "must look like N:M (e.g. 2:4), got '2-4'", "--nm '2-4' is not an N:M pattern; write it like 2:4"),
        ("two", "must look like N:M", "--nm 'two' is not an N:M pattern"),
        ("4:2", "needs 0 < N < M, got '4:2'", "N:M pattern 4:2 needs integers with 1 <= N < M; use e.g. 2:4"),
        ("4:4", "needs 0 < N < M", "1 <= N < M"),
        ("0:4", "needs 0 < N < M", "1 <= N < M"),
    ],
)
def test_bad_nm_patterns_say_what_is_wrong(text: str, config_message: str, flag_message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(config_message)) as caught:
        parse_nm(text)
    assert not isinstance(caught.value, MoepruneError)
    with pytest.raises(MoepruneError, match=re.escape(flag_message)):
        parse_nm(text, "--nm")


def test_nm_needs_m_to_divide_the_inputs() -> None:
    with pytest.raises(MoepruneError, match="N:M pattern 2:5 needs in_features divisible by 5, got 64; pick another M"):
        check_nm(2, 5, in_features=64)
    with pytest.raises(MoepruneError, match="1 <= N < M"):
        check_nm(2.0, 4)  # type: ignore[arg-type]
