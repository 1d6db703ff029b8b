"""The reference points of pipeline/references.py: the stripe colour histogram and the
grey-world normalisation on hand-made frames, and the chance level against its closed form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from pipeline.references import GREY, chance, grey_world, standing_rows, stripe_histogram

ROOT = Path(__file__).resolve().parents[1]


def colour_bin(r: int, g: int, b: int, levels: int = 4) -> int:
    """The histogram bin of a colour, counted by hand: each channel in 256 / levels steps."""
    return ((r * levels // 256) * levels + g * levels // 256) * levels + b * levels // 256


def test_stripe_histogram_of_a_hand_made_frame():
    """A 4 x 2 frame in 2 stripes: the top stripe red (2 pixels) and black (2), the bottom all
    white. Each stripe's counts over the frame's 8 pixels, square-rooted."""
    frame = np.zeros((4, 2, 3))
    frame[0, :] = (255, 0, 0)
    frame[2:, :] = (255, 255, 255)
    out = stripe_histogram(frame, stripes=2, levels=4).reshape(2, 64)
    expected = np.zeros((2, 64))
    expected[0, colour_bin(255, 0, 0)] = np.sqrt(2 / 8)
    expected[0, colour_bin(0, 0, 0)] = np.sqrt(2 / 8)
    expected[1, colour_bin(255, 255, 255)] = np.sqrt(4 / 8)
    assert_allclose(out, expected)


def test_stripe_histogram_counts_only_the_masked_pixels():
    """With a mask, only its pixels count, divided by the mask's size: a green pixel beside three
    masked-out blue ones gives one bin of value 1."""
    frame = np.zeros((2, 2, 3))
    frame[..., 2] = 255
    frame[0, 0] = (0, 200, 0)
    mask = np.zeros((2, 2), dtype=bool)
    mask[0, 0] = True
    out = stripe_histogram(frame, mask, stripes=1, levels=4)
    assert out[colour_bin(0, 200, 0)] == 1.0 and out.sum() == 1.0


def test_grey_world_on_the_mask_cancels_a_cameras_gain_and_cast():
    """The same person under two cameras (per-channel gains 0.7 x (1.2, 0.9, 1.0) and 1.1 x
    (0.8, 1.1, 1.0)) on different backdrops: after grey_world on the person's pixels the person
    is identical, each channel's mean over them GREY; on the whole frame it is not."""
    rng = np.random.default_rng(0)
    person = rng.uniform(40, 160, size=(6, 4, 3))
    mask = np.zeros((8, 4), dtype=bool)
    mask[1:7] = True
    frames = []
    for gain, backdrop in ((0.7 * np.array([1.2, 0.9, 1.0]), 30.0),
                           (1.1 * np.array([0.8, 1.1, 1.0]), 220.0)):
        frame = np.full((8, 4, 3), backdrop)
        frame[1:7] = person
        frames.append(frame * gain)
    a, b = (grey_world(f, mask) for f in frames)
    assert_allclose(a[mask], b[mask])
    assert_allclose(a[mask].mean(axis=0), [GREY] * 3)
    assert not np.allclose(grey_world(frames[0])[mask], grey_world(frames[1])[mask])


def test_grey_world_of_an_empty_mask_uses_the_whole_frame():
    frame = np.random.default_rng(1).uniform(10, 100, size=(4, 4, 3))
    assert_allclose(grey_world(frame, np.zeros((4, 4), dtype=bool)), grey_world(frame))


def test_chance_matches_its_closed_form():
    """Official protocol, random rankings: a query's rank-1 chance is its true matches over its
    non-junk gallery. 4 identities x 2 cameras, queries from camera 0, the gallery every
    tracklet: per query 1 true match among 7 non-junk items -> 1/7."""
    pids = np.repeat(np.arange(4), 2)
    camids = np.tile([0, 1], 4)
    result = chance(pids, camids, camids == 0, "synthetic", draws=2000)
    assert result["rank1"] == pytest.approx(1 / 7, abs=0.01)
    # AP of one true match at a uniform position r of 7, trapezoid rule: (1/r + the precision
    # before it) / 2, that precision 0 after r - 1 misses and 1 at the start
    ap = np.mean([(1 / r + (1.0 if r == 1 else 0.0)) / 2 for r in range(1, 8)])
    assert result["mAP"] == pytest.approx(ap, abs=0.01)


def test_standing_rows_put_the_models_between_floor_and_ceiling():
    """The rows in reading order: floor (chance, whole-frame histogram), the models of the
    evaluation file with their same-camera shares, the grid's pooled maps, the oracle ceiling;
    figures in percent with their intervals."""
    m = {"rank1": 0.5, "rank1_lo": 0.45, "rank1_hi": 0.55, "mAP": 0.4, "mAP_lo": 0.38,
         "mAP_hi": 0.42}
    cams = {"same_camera_top10": 0.3, "same_camera_chance": 0.25}
    references = {"chance": {"rank1": 0.002, "mAP": 0.004},
                  "histogram_frame": {**m, "rank1": 0.0, "rank1_lo": 0.0, "rank1_hi": 0.0,
                                      **cams},
                  "histogram_person_greyworld": {**m, "rank1": 0.9, **cams}}
    evaluation = {"models": {"baseline": {"official": m}},
                  "same_camera": {"baseline": cams}}
    probe = {"pooled": {"person share map": {**m, **cams}}}
    rows = standing_rows(references, evaluation, probe, {"baseline": "Baseline"})
    assert [r[0] for r in rows] == ["floor", "floor", "learned", "grid", "ceiling"]
    assert rows[0][2:4] == ["0.2", "0.4"]
    assert rows[2] == ["learned", "`baseline` (Baseline)", "50.0 [45.0, 55.0]",
                       "40.0 [38.0, 42.0]", "0.30 (chance 0.25)"]
    assert rows[3][1] == "the grid pooled on the person's cells (oracle)"
    assert rows[4][2] == "90.0 [45.0, 55.0]"
    # without references and probe: the models alone
    assert [r[0] for r in standing_rows(None, evaluation, None, {})] == ["learned"]


def test_the_readme_block_of_a_set_without_label_maps_shows_the_floor_and_says_why(tmp_path):
    """The README's standing block of a default run on a real set (no label maps): the floor and
    the models, no ceiling and no pooled grid, and a sentence that says why; a file of another
    shape is one error naming the file and the key."""
    import yaml

    from tools.project.docs.common import DocsError
    from tools.project.docs.standing import standing_block

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(video=["mars"], splits=[0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    m = {"rank1": 0.5, "rank1_lo": 0.45, "rank1_hi": 0.55, "mAP": 0.4, "mAP_lo": 0.38,
         "mAP_hi": 0.42}
    for folder, data in (("eval", {"models": {"baseline": {"official": m}}}),
                         ("references", {"references": {"chance": {"rank1": 0.0, "mAP": 0.0},
                                                        "histogram_frame": m},
                                         "cell_probe": None})):
        (tmp_path / "metrics" / folder).mkdir(parents=True)
        (tmp_path / "metrics" / folder / "mars-0.json").write_text(json.dumps(data))
    block = standing_block(tmp_path)
    assert "no label maps: no ceiling and no pooled grid, the floor alone" in block
    kinds = [line.split(" | ")[0].strip("| ") for line in block.splitlines()[-3:]]
    assert kinds == ["floor", "floor", "learned"]
    (tmp_path / "metrics" / "references" / "mars-0.json").write_text(json.dumps({"floor": {}}))
    with pytest.raises(DocsError, match=r"metrics/references/mars-0\.json: expected the key "
                                        r"references"):
        standing_block(tmp_path)


def test_locality_pools_each_frame_by_its_label_shares():
    """Two frames of a 2 x 1 grid, one channel: cell values (1, 3) and (5, 7). Person shares
    (1, 0) and (0.5, 0.5), background (0, 1) and (0, 0): uniform = mean of 2 and 6 = 4; person =
    mean of 1 and 6 = 3.5; background = mean of 3 and 0 (no background cell: weight 0) = 1.5."""
    from tools.probes.locality import parse_candidate, pool_grids

    grids = np.array([[1.0, 3.0], [5.0, 7.0]]).reshape(2, 1, 2, 1)
    shares = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.0, 0.0]]]).reshape(2, 2, 2, 1)
    out = pool_grids(grids, shares)
    assert_allclose([out["uniform"][0], out["person"][0], out["background"][0]], [4, 3.5, 1.5])
    assert parse_candidate("ft, last=data/m.pt:features.18") == ("ft, last", "data/m.pt",
                                                                  "features.18")
    with pytest.raises(Exception, match="NAME=SOURCE:MODULE"):
        parse_candidate("no-module")


def test_locality_of_the_training_tracklets_ranks_each_against_the_others(tmp_path, monkeypatch):
    """`--subset train`: what a choice of grid may be read from (never the test set): the
    training tracklets, each a query against the others; the output says which subset."""
    import pandas as pd

    from pipeline.checkpoints import export_model
    from pipeline.model import build_model
    from pipeline.params import ModelParams
    from tools.probes import locality

    seen: list[pd.DataFrame] = []

    def measure(backbone, module, table, size, N):
        seen.append(table)
        return {"grid": [8, 4, 2], "pooled": {m: {"rank1": 0.5} for m in locality.MAPS}}

    monkeypatch.setattr(locality, "candidate_locality", measure)
    rows = [{"pid": pid, "camid": cam, "subset": subset, "is_query": subset == "test" and cam == 1,
             "frames": [f"{subset}{pid}{cam}.jpg"], "labels": [f"{subset}{pid}{cam}.png"]}
            for subset, pids in (("train", (1, 2)), ("test", (3, 4))) for pid in pids
            for cam in (1, 2)]
    index = tmp_path / "split_0.json"
    index.write_text(json.dumps({"root": str(tmp_path), "tracklets": rows}))
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, embed_dim=16)
    export_model(tmp_path / "finetune.pt", build_model(cfg, head="baseline"), cfg, "baseline")
    (tmp_path / "params.yaml").write_text("model: {backbone: resnet18, init: scratch}\n")
    out = tmp_path / "locality.json"
    locality.main(["--params", str(tmp_path / "params.yaml"), "--index", str(index), "--out",
                   str(out), "--subset", "train",
                   "--candidate", f"fine-tuned, layer3={tmp_path / 'finetune.pt'}:layer3"])
    [table] = seen
    assert sorted(table["pid"]) == [1, 1, 2, 2] and table["is_query"].all()
    assert json.loads(out.read_text())["subset"] == "train"


def test_the_grid_rule_picks_the_deepest_local_block_of_the_fine_tuned_backbone_on_training_data():
    """The rule of docs/method.md ("Grid block"): a block is local when its person cells' rank-1
    lies above the interval of every cell alike; the deepest local block of the fine-tuned
    backbone is chosen (candidates are measured deepest first); the ImageNet candidate and the
    test set are never used."""
    from tools.probes.locality import chosen_block, rows

    def candidate(source, module, uniform_hi, person):
        return {"source": source, "module": module, "grid": [8, 4, 2], "pooled": {
            "uniform": {"rank1": uniform_hi - 0.05, "rank1_hi": uniform_hi},
            "person": {"rank1": person}, "background": {"rank1": 0.5}}}

    ft = "data/models/synthetic-0/finetune.pt"
    result = {"subset": "train", "candidates": {
        "imagenet": candidate("imagenet", "features.18", 0.1, 0.9),  # local, but not fine-tuned
        "a": candidate(ft, "features.18", 0.95, 0.94),  # person below every cell: not local
        "b": candidate(ft, "features.16", 0.90, 0.90),  # at the interval's top: not above it
        "c": candidate(ft, "features.14", 0.89, 0.92),  # the deepest local block
        "d": candidate(ft, "features.13", 0.40, 0.77)}}
    assert chosen_block(result) == "features.14"
    assert [r[-1] for r in rows(result)[1]] == ["yes", "no", "no", "yes", "yes"]
    assert rows(result)[1][3][-2] == "+8.0"  # person - every cell, in points
    assert chosen_block({**result, "subset": "test"}) is None  # never on the test set
    del result["candidates"]["c"], result["candidates"]["d"]
    assert chosen_block(result) is None
