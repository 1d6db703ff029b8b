"""Tests of the scoring the evaluate stage does (pipeline.metrics.score) on a hand-made ranking
problem, of the averaging over splits and the headline the summary stage writes (with their
intervals), and of the evaluate stage itself on two tiny fabricated sets: one shaped like a real
set (no label maps) and one like the synthetic set (label maps, a cache with parts)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.checkpoints import export_model, load
from pipeline.errors import CacheError
from pipeline.features import cache_attrs, write_cache
from pipeline.figures import DPI, INCHES_PER_COLUMN
from pipeline.metrics import headline, protocol_gallery, score, summarize
from pipeline.model import DRSA, build_model
from pipeline.params import ModelParams
from pipeline.stages import baseline as baseline_stage
from pipeline.stages import evaluate as stage
from pipeline.stages import summary
from pipeline.tables import LABELS, load_video_index, save_video_index
from tools.experiments.paired import compare_files

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
# 95% intervals, a bootstrap over the query identities (one query each here):
#   official, 3 identities: every draw is q3 (rank-1 0, AP 0) with probability 1/27, every draw q2
#     (rank-1 1, AP 1) with probability 1/27, both above 2.5%: rank1 and mAP in [0, 1].
#   torchreid, 2 valid identities: both draws q1 (rank-1 0, AP 9/20) or both q2 (1, 1), each with
#     probability 1/4: rank1 in [0, 1], mAP in [9/20, 1].
EXPECTED = {
    "official": {"rank1": 1 / 3, "rank1_lo": 0.0, "rank1_hi": 1.0, "rank5": 2 / 3,
                 "mAP": 26 / 63, "mAP_lo": 0.0, "mAP_hi": 1.0, "num_valid_queries": 2,
                 "num_queries": 3},
    "torchreid": {"rank1": 1 / 2, "rank1_lo": 0.0, "rank1_hi": 1.0, "rank5": 1.0,
                  "mAP": 29 / 40, "mAP_lo": 9 / 20, "mAP_hi": 1.0, "num_valid_queries": 2,
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
    # MARS and the MARS-layout sets keep MARS's rule; PRID2011 and iLIDS-VID rank a probe against
    # the other camera's test tracklets only (the non-query ones)
    for dataset in ("mars", "synthetic", "dukev", None):
        assert protocol_gallery("official", pids, is_query, dataset).tolist() == [True] * 6
    for dataset in ("prid2011", "ilidsvid"):
        assert protocol_gallery("official", pids, is_query, dataset).tolist() == [
            False, True, False, True, False, True]


def camera_pair_set() -> tuple[np.ndarray, pd.DataFrame]:
    """A PRID2011-shaped test set of 3 people: probes in camera 1 (cam_a, the queries), one
    sequence each in camera 2, as points on the unit circle (angle in degrees)."""
    rows = [  # pid, camid, is_query, angle
        (1, 1, True, 0), (2, 1, True, 10), (3, 1, True, 100),
        (1, 2, False, 20), (2, 2, False, 60), (3, 2, False, 101),
    ]
    pid, camid, is_query, angle = zip(*rows, strict=True)
    radians = np.deg2rad(angle)
    features = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)
    return features, pd.DataFrame({"pid": pid, "camid": camid, "is_query": is_query})


def test_official_protocol_on_camera_pair_sets_ranks_probes_against_the_other_camera():
    """Worked by hand. Probe 1 (0 deg): MARS's rule ranks probe 2 (10), then its own camera-2
    sequence (20): rank 2; the camera-pair rule has only camera 2: 1 (20) first, rank 1. Probe 2
    (10): MARS's rule: probe 1 (0, 10 away) and 1's camera-2 sequence (20, 10 away; the stable
    sort keeps gallery order: probe 1 first), then 2's own (60): rank 3; camera pair: 1 (20), then
    2 (60): rank 2. Probe 3 (100): its own (101) first under both. Rank-1: MARS 1/3, pair 2/3;
    rank-2: MARS 2/3, pair 1. Official AP by the trapezoid rule, one true match at rank r:
    (1/r + (0 if r > 1 else 1)) / 2 -> r=1: 1, r=2: 0.25, r=3: 1/6."""
    features, test = camera_pair_set()
    for dataset, rank1, rank2, ap in (("mars", 1 / 3, 2 / 3, (0.25 + 1 / 6 + 1) / 3),
                                      ("prid2011", 2 / 3, 1.0, (1 + 0.25 + 1) / 3),
                                      ("ilidsvid", 2 / 3, 1.0, (1 + 0.25 + 1) / 3)):
        metrics, curves, _ = score(features, *columns(test), ["official"], max_rank=3,
                                   dataset=dataset)
        assert metrics["official"]["rank1"] == pytest.approx(rank1), dataset
        assert curves["official"][1] == pytest.approx(rank2), dataset
        assert metrics["official"]["mAP"] == pytest.approx(ap), dataset
        assert metrics["official"]["num_queries"] == 3
    # on these sets the torchreid gallery is the same camera-2 set: the same ranks
    metrics, _, _ = score(features, *columns(test), ["torchreid"], max_rank=3,
                          dataset="prid2011")
    assert metrics["torchreid"]["rank1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("protocol", ["official", "torchreid"])
def test_score_hand_made_case(protocol):
    """rank1/rank5/mAP/valid queries and the CMC curve as worked out in the comment above."""
    features, test = hand_made()
    metrics, curves, queries = score(features, *columns(test), [protocol], max_rank=5)
    assert list(metrics) == [protocol] and list(curves) == [protocol] == list(queries)
    assert metrics[protocol] == pytest.approx(EXPECTED[protocol], abs=1e-12)
    assert list(metrics[protocol]) == ["rank1", "rank1_lo", "rank1_hi", "rank5", "mAP",
                                       "mAP_lo", "mAP_hi", "num_valid_queries", "num_queries"]
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
    metrics, curves, _ = score(features[order], *columns(shuffled), ["torchreid", "official"],
                               max_rank=20)
    assert list(metrics) == ["torchreid", "official"]
    for protocol, expected in EXPECTED.items():
        assert metrics[protocol] == pytest.approx(
            {**expected, "rank10": expected["rank5"], "rank20": expected["rank5"]}, abs=1e-12)
        assert len(curves[protocol]) == 20


# (pid, rank-1 hit, AP) of each query the protocol counts, as worked out in the comment above
EXPECTED_QUERIES = {"official": ([1, 2, 4], [0, 1, 0], [5 / 21, 1.0, 0.0]),
                    "torchreid": ([1, 2], [0, 1], [9 / 20, 1.0])}


@pytest.mark.parametrize("protocol", ["official", "torchreid"])
def test_score_per_query_scores_of_the_hand_made_case(protocol):
    """Each counted query's pid, rank-1 hit and AP; their means are the protocol's rank-1 and
    mAP exactly (official: the query without a true match counts 0; torchreid: it is left out)."""
    features, test = hand_made()
    metrics, _, queries = score(features, *columns(test), [protocol], max_rank=5)
    pid, hit, ap = EXPECTED_QUERIES[protocol]
    assert queries[protocol]["pid"].tolist() == pid
    assert queries[protocol]["hit"].tolist() == hit
    np.testing.assert_allclose(queries[protocol]["ap"], ap, rtol=0, atol=1e-12)
    assert queries[protocol]["hit"].mean() == metrics[protocol]["rank1"]
    assert queries[protocol]["ap"].mean() == metrics[protocol]["mAP"]


def fake_scores(num_ids: int = 300, per_id: int = 3, models: int = 4, seed: int = 0) -> dict:
    """Per-query scores of ``models`` models on ``num_ids`` x ``per_id`` queries, MARS-like pids."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(rng.choice(np.arange(1, 1500), num_ids, replace=False), per_id)
    return {f"model{m}": {"pid": pid, "hit": (rng.random(len(pid)) < 0.7).astype(np.int8),
                          "ap": rng.random(len(pid))} for m in range(models)}


def test_per_query_record_round_trips_and_is_small():
    """900 queries, 4 models (the default run): the pids once, hits as 0/1, APs to 4 decimals;
    read back equal, averaging to the unrounded scores within 5e-5, in under 60 kB, each list
    on one line (DVC's metrics commands skip lists: no clutter in `dvc metrics show`)."""
    scores = fake_scores()
    record = stage.per_query_record(scores)
    text = stage.results_json({"dataset": "mars", "per_query": {"official": record}})
    assert len(text.encode()) < 60_000
    assert text.count("\n") < 30  # one line per list, not per query
    back = json.loads(text)["per_query"]["official"]
    assert back == record
    assert back["pid"] == scores["model0"]["pid"].tolist()
    for name, s in scores.items():
        assert back["hit"][name] == s["hit"].tolist()
        np.testing.assert_allclose(back["ap"][name], s["ap"], rtol=0, atol=5e-5)
        assert np.mean(back["ap"][name]) == pytest.approx(s["ap"].mean(), abs=5e-5)


def test_per_query_record_refuses_models_scored_on_other_queries():
    scores = fake_scores(num_ids=5, models=2)
    scores["model1"] = {**scores["model1"], "pid": scores["model1"]["pid"][::-1]}
    with pytest.raises(ValueError, match="'model1' was scored on other queries"):
        stage.per_query_record(scores)


def test_results_json_puts_number_lists_on_one_line_and_keeps_everything_else():
    """Only arrays of numbers are joined; strings that look like arrays, nested arrays, empty
    ones and the rest read back unchanged."""
    results = {"note": "a [1,\n  2] in text", "strings": ["[1, 2]", "x"], "empty": [],
               "nested": [[1, 2], [3.5e-07, -4]], "numbers": [0.8125, 1, -2.5e+20],
               "models": {"baseline": {"official": {"rank1": 0.5}}}}
    text = stage.results_json(results)
    assert json.loads(text) == results
    assert '"numbers": [0.8125, 1, -2.5e+20]' in text and "[1, 2]," in text
    assert text.endswith("}\n")


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


# --- intervals over splits and in the headline ----------------------------------------------------


def with_intervals(evaluation_: dict, half: float) -> dict:
    """``evaluation_`` with every rank1 and mAP given the interval value ± ``half``."""
    for per_protocol in evaluation_["models"].values():
        for m in per_protocol.values():
            for metric in ("rank1", "mAP"):
                m[f"{metric}_lo"], m[f"{metric}_hi"] = m[metric] - half, m[metric] + half
    return evaluation_


def test_summary_interval_of_one_split_is_its_own_and_of_several_the_normal_approximation():
    """One split: its bounds as they are. Two independent splits with half-widths 0.125 and
    0.25 (exact binary fractions): the mean ± sqrt(0.125² + 0.25²) / 2."""
    one = summarize([with_intervals(evaluation("prid2011", 0, 0.25, 0.5, 8), 0.125)])
    assert one["prid2011"]["temporal"]["official"]["rank1"] == {
        "mean": 0.25, "std": 0.0, "lo": 0.125, "hi": 0.375}
    two = summarize([with_intervals(evaluation("prid2011", 0, 0.25, 0.5, 8), 0.125),
                     with_intervals(evaluation("prid2011", 1, 0.75, 0.75, 9), 0.25)])
    rank1 = two["prid2011"]["temporal"]["official"]["rank1"]
    half = np.sqrt(0.125 ** 2 + 0.25 ** 2) / 2
    assert rank1 == pytest.approx({"mean": 0.5, "std": 0.25, "lo": 0.5 - half,
                                   "hi": 0.5 + half}, abs=1e-15)
    assert "lo" not in two["prid2011"]["temporal"]["official"]["rank5"]  # rank-1 and mAP only
    # an older split file without intervals: no interval for the mean
    mixed = summarize([with_intervals(evaluation("prid2011", 0, 0.25, 0.5, 8), 0.125),
                       evaluation("prid2011", 1, 0.75, 0.75, 9)])
    assert "lo" not in mixed["prid2011"]["temporal"]["official"]["rank1"]


def test_headline_ci_is_the_largest_half_width_over_the_models():
    """ci.R1 and ci.mAP: the largest half-width of the models' intervals, in percent, after the
    models' groups; none when a model has no interval (results from before intervals)."""
    split = with_intervals(evaluation("prid2011", 0, 0.25, 0.5, 8), 0.125)
    split["models"]["joint"]["official"].update(rank1_lo=0.0625, rank1_hi=0.1875)  # ± 0.0625
    split["models"]["baseline"]["official"].update(mAP_lo=0.25, mAP_hi=0.875)  # ± 0.3125
    head = headline(summarize([split])["prid2011"], "official")
    assert head == {"R1": {"tem": 25.0, "base": 25.0, "ind": 12.5},
                    "mAP": {"tem": 50.0, "base": 50.0, "ind": 50.0},
                    "ci": {"R1": 12.5, "mAP": 31.2}}
    assert list(head) == ["R1", "mAP", "ci"]
    del split["models"]["joint"]["official"]["rank1_lo"]
    assert "ci" not in headline(summarize([split])["prid2011"], "official")


# --- the stage on fabricated sets: a real set's shape (no label maps) and a labelled one ---------

SIZE = (64, 32)  # (H, W): a 4 x 2 res5c grid with last stride 1
TORSO, LEGS, OCCLUDER = LABELS.index("torso"), LABELS.index("legs"), LABELS.index("occluder")
# (pid, camid, subset, is_query, frames) of each tracklet
TRACKLETS = [(1, 1, "train", False, 4), (1, 2, "train", False, 3), (2, 1, "train", False, 5),
             (2, 2, "train", False, 4), (5, 1, "test", True, 4), (5, 2, "test", False, 5),
             (6, 1, "test", True, 3), (6, 2, "test", False, 6), (7, 2, "test", False, 4)]


def label_map(frame: int) -> np.ndarray:
    """(H, W, 2) uint8: torso above legs; the lower 5/8 (a quarter of the torso, all the legs)
    hidden by the occluder in odd frames (channel 0 what is seen, channel 1 without the
    occluder)."""
    H, W = SIZE
    whole = np.full((H, W), TORSO, dtype=np.uint8)
    whole[H // 2:] = LEGS
    seen = whole.copy()
    if frame % 2:
        seen[3 * H // 8:] = OCCLUDER
    return np.stack([seen, whole], axis=-1)


def fabricate(root: Path, labelled: bool) -> list[str]:
    """Frames (and label maps), the index, the cache and three exported models of a tiny set;
    the evaluate stage's arguments."""
    rng = np.random.default_rng(0)
    rows = []
    for t, (pid, camid, subset, is_query, length) in enumerate(TRACKLETS):
        frames, labels = [], []
        for n in range(length):
            frame = root / "raw" / f"{t}_{n}.png"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(frame)
            frames.append(frame)
            if labelled:
                labels.append(root / "raw" / "labels" / f"{t}_{n}.png")
                labels[-1].parent.mkdir(exist_ok=True)
                Image.fromarray(label_map(n), mode="LA").save(labels[-1])
        rows.append({"pid": pid, "camid": camid, "subset": subset, "is_query": is_query,
                     "frames": frames, "labels": labels})
    save_video_index(pd.DataFrame(rows), root / "raw", root / "split_0.json")
    table = load_video_index(root / "split_0.json")

    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, N=3, K=2, d=8,
                      embed_dim=8)
    torch.manual_seed(0)
    backbone_net = build_model(cfg, head="baseline")
    export_model(root / "finetune.pt", backbone_net, cfg, "baseline")
    spatial = dataclasses.replace(cfg, temporal_pooling="avg")
    export_model(root / "spatial.pt", DRSA(spatial, 512), spatial, "drsa")
    joint = build_model(cfg, head="drsa")
    with torch.no_grad():  # temporal attention starts as average pooling: make it attend
        joint.head.temporal.weight.normal_()
    export_model(root / "joint.pt", joint, cfg, "drsa")
    write_cache(root / "cache.h5", backbone_net.backbone,
                {s: table[table["subset"] == s].reset_index(drop=True) for s in ("train", "test")},
                SIZE, cache_attrs(root / "finetune.pt", load(root / "finetune.pt")),
                part_names=LABELS if labelled else ())
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"video": ["synthetic"], "height": SIZE[0], "width": SIZE[1], "num_workers": 0},
        "model": {"backbone": "resnet18", "init": "scratch", "last_stride": 1, "N": 3, "K": 2,
                  "d": 8, "embed_dim": 8},
        "evaluate": {"batch_size": 2, "max_rank": 5, "attention_figures": 1},
        "runtime": {"device": "cpu"}}))
    return ["--params", str(root / "params.yaml"), "--dataset", "synthetic", "--split", "0",
            "--index", str(root / "split_0.json"), "--cache", str(root / "cache.h5"),
            "--backbone", str(root / "finetune.pt"),
            "--model", f"baseline={root / 'finetune.pt'}", "--model",
            f"spatial={root / 'spatial.pt'}", "--model", f"joint={root / 'joint.pt'}",
            "--out", str(root / "eval.json"), "--cmc", str(root / "cmc.csv"),
            "--figures", str(root / "figures")]


GROUND_TRUTH_KEYS = {"person", "occluder", "background", "parts_covered", "visibility_corr",
                     "frames_measured", "frames_missing"}


def test_a_set_without_label_maps_gets_intervals_and_no_ground_truth(tmp_path, capsys):
    """A real set's shape (a cache without parts, a table without label maps): every model
    scored with its intervals, the attention models with overlap and entropy only, no error; the
    figure of the query drawn without a parts column."""
    stage.main(fabricate(tmp_path, labelled=False))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert list(result["models"]) == ["baseline", "spatial", "joint"]
    for per_protocol in result["models"].values():
        for m in per_protocol.values():
            assert m["rank1_lo"] <= m["rank1"] <= m["rank1_hi"]
            assert m["mAP_lo"] <= m["mAP"] <= m["mAP_hi"]
    assert {m: set(a) for m, a in result["attention"].items()} == {
        "spatial": {"overlap", "entropy"}, "joint": {"overlap", "entropy"}}
    per_query = result["per_query"]["official"]  # the test queries: pids 5 and 6
    assert per_query["pid"] == [5, 6] and list(per_query["hit"]) == list(result["models"])
    for name, per_protocol in result["models"].items():
        assert np.mean(per_query["hit"][name]) == per_protocol["official"]["rank1"]
        assert np.mean(per_query["ap"][name]) == pytest.approx(per_protocol["official"]["mAP"],
                                                               abs=5e-5)
    same = compare_files(result, "joint", result, "joint")
    assert [(same[m]["lo"], same[m]["hi"]) for m in ("rank1", "mAP")] == [(0.0, 0.0)] * 2
    assert "where the heads look" not in capsys.readouterr().out
    assert len(list((tmp_path / "figures").glob("*.png"))) == 1


def test_a_labelled_set_gets_the_ground_truth_measures(tmp_path, capsys):
    """The synthetic set's shape (label maps, a cache with parts): each attention model measured
    against the ground truth, masses summing to 1 per head, the parts those of the label maps,
    average pooling (spatial) 0 by construction; the figure gains its parts column."""
    args = fabricate(tmp_path, labelled=True)
    stage.main(args)
    result = json.loads((tmp_path / "eval.json").read_text())
    for name, a in result["attention"].items():
        assert set(a) >= GROUND_TRUTH_KEYS, name
        assert a["frames_measured"] == 5 * 3 and a["frames_missing"] == 0  # 5 test clips of N 3
        for k in (1, 2):
            masses = [a[f"head{k}_{what}"] for what in ("person", "occluder", "background")]
            assert sum(masses) == pytest.approx(1.0, abs=2e-3)  # float16 fractions
            assert a[f"head{k}_background"] == pytest.approx(0.0, abs=1e-3)  # no background
            assert a[f"head{k}_part"] in ("torso", "legs")
        assert 1 <= a["parts_covered"] <= 2
    spatial = result["attention"]["spatial"]
    assert (spatial["visibility_corr"], spatial["visibility_corr_lo"],
            spatial["visibility_corr_hi"]) == (0.0, 0.0, 0.0)
    assert "0 by construction" in spatial["visibility_corr_note"]
    joint = result["attention"]["joint"]  # its temporal attention does vary over the frames
    assert "visibility_corr_note" not in joint
    assert -1 <= joint["visibility_corr_lo"] <= joint["visibility_corr_hi"] <= 1
    out = capsys.readouterr().out
    assert "where the heads look" in out and "per head" in out
    (figure,) = (tmp_path / "figures").glob("*.png")
    with Image.open(figure) as image:  # frame, parts, 2 heads; N rows, title and legend
        assert image.mode == "P" and image.size[0] == round(4 * INCHES_PER_COLUMN * DPI)

    # the summary stage on this split: the headline with its ci, the measures printed
    for folder in ("evals", "cmc", "live/pretrain/plots/metrics/mean"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "eval.json").rename(tmp_path / "evals" / "synthetic-0.json")
    (tmp_path / "cmc.csv").rename(tmp_path / "cmc" / "synthetic-0.csv")
    (tmp_path / "live/pretrain/plots/metrics/mean/loss.tsv").write_text("step\tloss\n1\t2.0\n")
    summary.main(["--params", args[1], "--evals", str(tmp_path / "evals"), "--cmc",
                  str(tmp_path / "cmc"), "--live", str(tmp_path / "live"), "--out",
                  str(tmp_path / "results"), "--figures", str(tmp_path / "summary")])
    head = json.loads((tmp_path / "results" / "synthetic.json").read_text())
    assert list(head) == ["R1", "mAP", "ci"] and list(head["R1"]) == ["base", "spa", "ind"]
    joint = result["models"]["joint"]["official"]
    assert head["ci"]["R1"] >= round(50 * (joint["rank1_hi"] - joint["rank1_lo"]), 1)
    out = capsys.readouterr().out
    assert "Where the heads look" in out and "parts_covered" in out


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_baseline_stage_s_embeddings_score_as_the_model_itself(tmp_path):
    """The baseline stage embeds the Baseline once; evaluate given its .npz writes the results
    file byte for byte as when it runs the model itself. A saved file of another clip length, or
    no saved file at all, is refused naming the file."""
    args = fabricate(tmp_path, labelled=True)
    stage.main(args)
    direct = (tmp_path / "eval.json").read_bytes()
    inputs = [a for name in ("--params", "--dataset", "--split", "--index", "--cache",
                             "--backbone") for a in (name, option(args, name))]
    saved = tmp_path / "embeddings" / "baseline.npz"
    baseline_stage.main([*inputs, "--out", str(saved)])
    with np.load(saved, allow_pickle=False) as f:
        assert f["embedding"].shape == (5, 8) and f["pid"].tolist() == [5, 5, 6, 6, 7]
    i = args.index(f"baseline={tmp_path / 'finetune.pt'}")
    stage.main([*args[:i], f"baseline={saved}", *args[i + 1:]])
    assert (tmp_path / "eval.json").read_bytes() == direct

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"]["N"] = 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    other = [*args[:i], f"baseline={saved}", *args[i + 1:]]
    other[other.index("--params") + 1] = str(tmp_path / "other.yaml")
    refused = rf"^{re.escape(str(saved))}: computed with other model\.N than"
    with pytest.raises(CacheError, match=refused):
        stage.main(other)
    other[other.index(f"baseline={saved}")] = f"baseline={tmp_path / 'eval.json'}.npz"
    (tmp_path / "eval.json.npz").write_text("not an npz")
    with pytest.raises(CacheError, match=r"eval\.json\.npz: not a saved embedding file"):
        stage.main(other)
