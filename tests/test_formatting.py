"""The one module that writes numbers and tables (pipeline.formatting): exact strings."""

from __future__ import annotations

import pytest

from pipeline.formatting import (
    NA,
    corr,
    markdown_table,
    num,
    num_stat,
    pct,
    pct_bounds,
    pct_interval,
    pct_of,
    pct_stat,
    text_table,
)


def test_percents_round_to_one_decimal_and_none_is_na():
    assert pct(0.7583) == "75.8"
    assert pct(0.0) == "0.0"
    assert pct(None) == NA == "n/a"
    assert pct_bounds(0.726, 0.7922) == " [72.6, 79.2]"
    assert pct_bounds(0.726, None) == ""
    assert pct_interval(0.758, 0.726, 0.792) == "75.8 [72.6, 79.2]"
    assert pct_interval(0.758) == "75.8"
    assert pct_interval(None, 0.1, 0.2) == NA


def test_pct_of_reads_the_metrics_file_layout():
    record = {"rank1": 0.5, "rank1_lo": 0.45, "rank1_hi": 0.55, "mAP": 0.25}
    assert pct_of(record, "rank1") == "50.0 [45.0, 55.0]"
    assert pct_of(record, "mAP") == "25.0"  # no bounds in the file: no brackets
    assert pct_of(record, "rank5") == NA
    assert pct_of({"rank1": 0.5, "rank1_lo": None, "rank1_hi": 0.6}, "rank1") == "50.0"


def test_means_with_their_spread():
    assert pct_stat(0.758, 0.023) == "75.8 ± 2.3"
    assert pct_stat(0.758, 0.023, 0.726, 0.792) == "75.8 ± 2.3 [72.6, 79.2]"
    assert pct_stat(0.5, None) == "50.0 ± 0.0"
    assert pct_stat(None, 0.1) == NA
    assert num_stat(0.1449, 0.0104) == "0.145 ± 0.010"
    assert num_stat(1.5, 0.25, ".2f") == "1.50 ± 0.25"
    assert num_stat(None, 0.1) == NA


@pytest.mark.parametrize(("value", "spec", "text"), [
    (0.12345, ".3f", "0.123"), (0.5, "+.2f", "+0.50"), (-0.5, "+.2f", "-0.50"),
    (0.000123, ".3g", "0.000123"), (4, "", "4"), (None, ".3f", NA)])
def test_num(value, spec, text):
    assert num(value, spec) == text


def test_correlations_carry_their_sign():
    assert corr(0.3131) == "+0.313"
    assert corr(0.3131, -0.02, 0.4) == "+0.313 [-0.020, +0.400]"
    assert corr(0.3131, 0.2, 0.4, std=0.0104) == "+0.313 ± 0.010 [+0.200, +0.400]"
    assert corr(-0.25, -0.3, None, digits=2) == "-0.25"
    assert corr(None, 0.1, 0.2) == NA


def test_markdown_table_escapes_pipes():
    assert markdown_table(["a", "b|c"], [[1, "x|y"], ["", 2.5]]) == (
        "| a | b\\|c |\n| --- | --- |\n| 1 | x\\|y |\n|  | 2.5 |")


def test_text_table_aligns_columns_and_shortens_floats():
    assert text_table(["model", "rank1"], [["baseline", 0.758333], ["joint", 1]]).splitlines() == [
        "model      rank1",
        "--------  ------",
        "baseline  0.7583",
        "joint          1",
    ]
