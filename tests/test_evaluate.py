"""Tests of the scoring the evaluate stage does (pipeline.metrics.score) on a hand-made ranking
problem, and of the averaging over splits and the headline the summary stage writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.metrics import headline, protocol_gallery, score, summarize

# The test set: (pid, camid, is_query, angle in degrees of the 2-D unit feature). Squared
# Euclidean distances between unit vectors are 2 - 2 cos(angle difference), so each query ranks
# the tracklets by angle difference.
TEST_SET = [
    (1, 0, True, 0),  # 0: query q1
    (2, 0, True, 100),  # 1: query q2
    (4, 1, True, 250),  # 2: query q3, no other tracklet of pid 4: never a true match
    (1, 0, False, 5),  # 3: q1's pid and camera: junk for q1
    (-1, 1, False, 10),  # 4: pid -1: junk (official), not in the gallery (torchreid)
    (3, 1, False, 20),  # 5: another identity
    (1, 1, False, 30),  # 6: true match of q1
    (2, 1, False, 70),  # 7: true match of q2
    (1, 2, False, 170),  # 8: true match of q1, far away
    (2, 0, False, 95),  # 9: q2's pid and camera: junk for q2
]
# official (gallery = all 10 tracklets; junk skipped without taking a rank):
#   q1 (0°) ranks by difference: 0 self junk, 3 (5°) junk, 4 (10°) junk, 5 (20°), 6 (30°) match,
#     7 (70°), 9 (95°), 1 (100°), 2 (110°), 8 (170°) match.
#     Non-junk ranks: 5, 6*, 7, 9, 1, 2, 8*: first hit at rank 2; 2 true matches.
#     AP (trapezoid, old precision 1 at the start): rank 2: recall 0 -> 1/2, precision 0/1 -> 1/2:
#     1/2 * (0 + 1/2) / 2 = 1/8; rank 7: recall 1/2 -> 1, precision 1/6 -> 2/7:
#     1/2 * (1/6 + 2/7) / 2 = 19/168. AP = 21/168 + 19/168 = 5/21.
#   q2 (100°): 1 self junk, 9 (5°) junk, 7 (30°) match first: rank 1, 1 true match, AP = 1.
#   q3 (250°): no true match: scores 0 but counts (official divides by all 3 queries).
#   rank1 = (0 + 1 + 0) / 3 = 1/3, rank5 = (1 + 1 + 0) / 3 = 2/3, mAP = (5/21 + 1) / 3 = 26/63.
# torchreid (gallery = non-queries without pid -1: 3, 5, 6, 7, 8, 9):
#   q1: 3 junk, 5, 6*, 7, 9, 8*: first hit at rank 2; AP = mean(1/2, 2/5) = 9/20.
#   q2: 9 junk, 7*: rank 1, AP = 1.   q3: no true match: skipped (2 valid queries).
#   rank1 = 1/2, rank5 = 1, mAP = (9/20 + 1) / 2 = 29/40.
EXPECTED = {
    "official": {"rank1": 1 / 3, "rank5": 2 / 3, "mAP": 26 / 63, "num_valid_queries": 2,
                 "num_queries": 3},
    "torchreid": {"rank1": 1 / 2, "rank5": 1.0, "mAP": 29 / 40, "num_valid_queries": 2,
                  "num_queries": 3},
}
EXPECTED_CMC = {"official": [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3], "torchreid": [0.5, 1, 1, 1, 1]}


def hand_made() -> tuple[np.ndarray, pd.DataFrame]:
    """Features (10, 2) and the test table of TEST_SET."""
    pid, camid, is_query, angle = zip(*TEST_SET, strict=True)
    radians = np.deg2rad(angle)
    features = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)
    test = pd.DataFrame({"pid": pid, "camid": camid, "is_query": is_query,
                         "frames": [[f"{i}.jpg"] for i in range(len(pid))]})
    return features, test


def columns(test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return test["pid"].to_numpy(), test["camid"].to_numpy(), test["is_query"].to_numpy()


def test_protocol_gallery():
    """official: every test tracklet; torchreid: neither a query nor pid -1."""
    pids = np.array([1, 2, -1, 1, -1, 3])
    is_query = np.array([True, False, False, False, True, False])
    assert protocol_gallery("official", pids, is_query).tolist() == [True] * 6
    assert protocol_gallery("torchreid", pids, is_query).tolist() == [
        False, True, False, True, False, True]


@pytest.mark.parametrize("protocol", ["official", "torchreid"])
def test_score_hand_made_case(protocol):
    """rank1/rank5/mAP/valid queries and the CMC curve as worked out in the comment above."""
    features, test = hand_made()
    metrics, curves = score(features, *columns(test), [protocol], max_rank=5)
    assert list(metrics) == [protocol] and list(curves) == [protocol]
    assert metrics[protocol] == pytest.approx(EXPECTED[protocol], abs=1e-12)
    assert list(metrics[protocol]) == ["rank1", "rank5", "mAP", "num_valid_queries",
                                       "num_queries"]
    np.testing.assert_allclose(curves[protocol], EXPECTED_CMC[protocol], atol=1e-12)
    json.dumps(metrics)  # plain Python numbers, ready for the metrics file
    assert all(type(v) is float for k, v in metrics[protocol].items() if k[0] in "rm")


def test_score_both_protocols_and_rank_keys_up_to_max_rank():
    """Both protocols at once, in the order asked; ranks 10 and 20 appear once max_rank allows,
    and neither the row order of the test table nor a non-default index matters."""
    features, test = hand_made()
    order = np.random.default_rng(0).permutation(len(test))
    shuffled = test.iloc[order]
    shuffled.index = shuffled.index + 100
    metrics, curves = score(features[order], *columns(shuffled), ["torchreid", "official"],
                            max_rank=20)
    assert list(metrics) == ["torchreid", "official"]
    for protocol, expected in EXPECTED.items():
        assert metrics[protocol] == pytest.approx(
            {**expected, "rank10": expected["rank5"], "rank20": expected["rank5"]}, abs=1e-12)
        assert len(curves[protocol]) == 20


# --- summary ------------------------------------------------------------------------------------


def evaluation(dataset: str, split: int, rank1: float, mAP: float, valid: int) -> dict:
    """A per-split evaluate output; models in a non-alphabetical order."""
    per_protocol = {"official": {"rank1": rank1, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0,
                                 "mAP": mAP, "num_valid_queries": valid, "num_queries": 10},
                    "torchreid": {"rank1": rank1 / 2, "rank5": 0.5, "mAP": mAP / 2,
                                  "num_valid_queries": valid, "num_queries": 10}}
    return {"dataset": dataset, "split": split, "seed": 0,
            "models": {"temporal": per_protocol, "baseline": per_protocol,
                       "joint": {"official": {**per_protocol["official"], "rank1": 0.125}}}}


def test_summary_means_and_population_std_over_splits():
    """Two splits of one set: mean and population std (ddof 0) of each metric, exactly (the
    values are exact binary fractions); the splits listed; models and protocols in input
    order; metrics absent from the input absent from the summary."""
    summary = summarize([evaluation("prid2011", 0, 0.25, 0.5, 8),
                         evaluation("prid2011", 1, 0.75, 0.75, 9)])
    assert list(summary) == ["prid2011"]
    models = summary["prid2011"]
    assert list(models) == ["temporal", "baseline", "joint"]
    assert list(models["temporal"]) == ["official", "torchreid"]
    official = models["temporal"]["official"]
    assert official["splits"] == [0, 1]
    assert official["rank1"] == {"mean": 0.5, "std": 0.25}
    assert official["mAP"] == {"mean": 0.625, "std": 0.125}
    assert official["rank5"] == {"mean": 1.0, "std": 0.0}
    assert official["num_valid_queries"] == 8.5  # mean over the splits
    torchreid = models["baseline"]["torchreid"]
    assert torchreid["rank1"] == {"mean": 0.25, "std": 0.125}
    assert "rank10" not in torchreid and "rank20" not in torchreid
    assert models["joint"]["official"]["rank1"] == {"mean": 0.125, "std": 0.0}
    assert list(models["joint"]) == ["official"]
    json.dumps(summary)


def test_summary_keeps_datasets_apart():
    """Splits of two sets, interleaved: each set averaged over its own splits only, sets in
    order of first appearance; one split gives std 0."""
    summary = summarize([evaluation("mars", 0, 0.5, 0.5, 10),
                         evaluation("ilidsvid", 3, 0.25, 0.25, 5),
                         evaluation("ilidsvid", 7, 0.75, 0.25, 5)])
    assert list(summary) == ["mars", "ilidsvid"]
    mars = summary["mars"]["baseline"]["official"]
    assert mars["splits"] == [0]
    assert mars["rank1"] == {"mean": 0.5, "std": 0.0}
    ilids = summary["ilidsvid"]["baseline"]["official"]
    assert ilids["splits"] == [3, 7]
    assert ilids["rank1"] == {"mean": 0.5, "std": 0.25}
    assert ilids["mAP"] == {"mean": 0.25, "std": 0.0}
    assert ilids["num_valid_queries"] == 5


def test_headline_is_rank1_and_map_of_each_model_in_percent():
    """The headline (metrics/results/<set>.json) of a summarized set: official rank-1 and mAP
    means in percent with one decimal, each model under its short name, in table order."""
    summary = summarize([evaluation("prid2011", 0, 0.25, 0.5, 8),
                         evaluation("prid2011", 1, 0.75, 0.75, 9)])
    assert headline(summary["prid2011"], "official") == {
        "R1": {"tem": 50.0, "base": 50.0, "ind": 12.5},
        "mAP": {"tem": 62.5, "base": 62.5, "ind": 62.5}}


def test_headline_rounds_to_one_decimal():
    summary = summarize([evaluation("mars", 0, 1 / 3, 2 / 3, 8)])
    assert headline(summary["mars"], "official")["R1"]["base"] == 33.3
    assert headline(summary["mars"], "official")["mAP"]["base"] == 66.7
