"""The attention-map statistics (exact values on hand-made maps), the Fig. 3 overlay and the
curve figures (pixel sizes, one panel per head, values in range), and their aggregation in the
summary stage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from pipeline.attention_stats import attention_entropy, attention_overlap, summarize_attention
from pipeline.figures import (
    DPI,
    PALETTE_COLOURS,
    PART_COLOURS,
    attention_figure,
    cell_maps,
    cmc_figure,
    loss_figure,
    save_figure,
)

# --- overlap and entropy ------------------------------------------------------------------------


def test_overlap_is_zero_for_disjoint_and_one_for_identical_maps():
    disjoint = np.eye(4)[None]  # 4 heads, each on its own cell
    identical = np.full((1, 3, 5), 0.2)
    assert attention_overlap(disjoint) == pytest.approx([0.0])
    assert attention_overlap(identical) == pytest.approx([1.0])


def test_overlap_is_the_mean_bhattacharyya_coefficient_over_pairs():
    S = np.array([[0.5, 0.5, 0.0, 0.0],
                  [0.0, 0.5, 0.5, 0.0],
                  [0.0, 0.0, 0.0, 1.0]])
    # pairs: (0,1) sqrt(.25) = 0.5, (0,2) 0, (1,2) 0 -> mean 0.5 / 3
    assert attention_overlap(S[None, None])[0, 0] == pytest.approx(0.5 / 3)
    q = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert attention_overlap(q) == pytest.approx(2 * math.sqrt(0.09))


def test_overlap_of_one_head_is_undefined():
    assert np.isnan(attention_overlap(np.full((2, 1, 4), 0.25))).all()


def test_entropy_of_one_hot_uniform_and_mixed_maps():
    L = 8
    uniform = np.full((1, 2, L), 1 / L)
    one_hot = np.eye(L)[:2][None]
    assert attention_entropy(uniform) == pytest.approx([math.log(L)])
    assert attention_entropy(one_hot) == pytest.approx([0.0])  # 0 log 0 = 0, no NaN
    mixed = np.array([[[0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25]]])
    assert attention_entropy(mixed) == pytest.approx([(math.log(2) + math.log(4)) / 2])


# --- Fig. 3 ------------------------------------------------------------------------------------


def tiny_tracklet(N=3, H=32, W=16, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)
    return frames


def test_cell_maps_draw_each_cell_as_a_block_of_its_value():
    """Cell resolution: every pixel of a cell has the cell's value (scaled by the map's peak), so
    a map on one cell covers exactly that cell's pixels and nothing else."""
    h, w, L = 4, 2, 8
    maps = np.zeros((1, 2, L))
    maps[0, 0, 0] = 1.0  # head 0 on cell (0, 0): top left
    maps[0, 1, 7] = 0.75  # head 1 mostly on cell (3, 1): bottom right ...
    maps[0, 1, 2] = 0.25  # ... a third of that on cell (1, 0)
    up = cell_maps(maps, (h, w), (32, 16))  # 8 x 8 pixels per cell
    assert up.shape == (1, 2, 32, 16)
    expected0 = np.zeros((32, 16))
    expected0[:8, :8] = 1.0
    np.testing.assert_array_equal(up[0, 0], expected0)
    expected1 = np.zeros((32, 16))
    expected1[24:, 8:] = 1.0
    expected1[8:16, :8] = 1 / 3
    np.testing.assert_allclose(up[0, 1], expected1)
    with pytest.raises(ValueError, match="8 cells, but the grid is 3 x 2"):
        cell_maps(maps, (3, 2), (32, 16))


def test_cell_maps_of_an_image_not_a_multiple_of_the_grid():
    """Each pixel takes the cell it falls in (row * h // H): a 5 x 3 image on a 2 x 2 grid."""
    maps = np.array([[[0.1, 0.2, 0.3, 0.4]]])
    up = cell_maps(maps, (2, 2), (5, 3))[0, 0] * 0.4
    np.testing.assert_allclose(up, [[0.1, 0.1, 0.2], [0.1, 0.1, 0.2], [0.1, 0.1, 0.2],
                                    [0.3, 0.3, 0.4], [0.3, 0.3, 0.4]])


def test_attention_figure_has_a_panel_per_frame_and_head_and_prints_the_weights(tmp_path):
    N, K, H, W, h, w = 3, 2, 32, 16, 4, 2
    frames = tiny_tracklet(N, H, W)
    rng = np.random.default_rng(1)
    maps = rng.random((N, K, h * w))
    maps /= maps.sum(-1, keepdims=True)
    temporal = np.array([[0.2, 0.5], [0.3, 0.25], [0.5, 0.25]])
    fig = attention_figure(frames, maps, (h, w), temporal, title="tiny",
                           frame_labels=["a", "b", "c"])
    axes = fig.get_axes()
    assert len(axes) == N * (K + 1)
    assert [ax.get_title() for ax in axes[:K + 1]] == ["frame", "head 1", "head 2"]
    printed = sorted(t.get_text() for ax in axes for t in ax.texts)
    assert printed == sorted(f"{v:.2f}" for v in temporal.ravel())
    for n in range(N):
        assert np.array_equal(axes[n * (K + 1)].images[0].get_array(), frames[n])
        for k in range(K):
            heat = np.asarray(axes[n * (K + 1) + k + 1].images[1].get_array())
            assert heat.shape == (H, W) and heat.min() >= 0 and heat.max() <= 1
    path = tmp_path / "fig3" / "tiny.png"
    save_figure(fig, path)
    width, height = fig.get_size_inches() * DPI
    with Image.open(path) as image:
        assert image.size == (round(width), round(height))
        assert image.mode == "P" and len(image.getcolors()) <= PALETTE_COLOURS  # a palette PNG
    assert [p.name for p in path.parent.iterdir()] == ["tiny.png"]  # no temporary left


def test_attention_figure_with_the_ground_truth_parts_column(tmp_path):
    """A parts column after the frame, each label in its flat colour, a legend of the labels
    present; the heads' panels and weights as without it; the picture a small palette PNG."""
    N, K, H, W, h, w = 2, 2, 32, 16, 4, 2
    frames = tiny_tracklet(N, H, W)
    maps = np.full((N, K, h * w), 1 / (h * w))
    names = ["background", "hair", "skin", "torso", "arms", "legs", "shoes", "bag", "occluder"]
    parts = np.zeros((N, H, W), dtype=np.uint8)
    parts[:, 8:20] = names.index("torso")
    parts[:, 20:] = names.index("legs")
    parts[1, 24:] = names.index("occluder")
    fig = attention_figure(frames, maps, (h, w), np.full((N, K), 0.5), parts=parts,
                           part_names=names)
    axes = fig.get_axes()
    assert len(axes) == N * (K + 2)
    assert [ax.get_title() for ax in axes[:K + 2]] == ["frame", "parts", "head 1", "head 2"]
    for n in range(N):
        shown = axes[n * (K + 2) + 1].images[0]
        np.testing.assert_array_equal(shown.get_array(), parts[n])
        colours = shown.cmap(shown.norm(parts[n]))[..., :3]  # each label its own colour
        torso = np.array(to_rgb(PART_COLOURS["torso"]))
        np.testing.assert_allclose(colours[10, 5], torso)
        np.testing.assert_allclose(colours[0, 0], to_rgb(PART_COLOURS["background"]))
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == [
        "background", "legs", "occluder", "torso"]
    assert sorted(t.get_text() for ax in axes for t in ax.texts) == ["0.50"] * (N * K)
    path = tmp_path / "parts.png"
    save_figure(fig, path)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (round(4 * DPI), round((N * 2 + 0.8) * DPI))


def test_save_figure_leaves_nothing_when_writing_fails(tmp_path):
    fig = attention_figure(tiny_tracklet(1), np.full((1, 1, 8), 1 / 8), (4, 2))
    path = tmp_path / "broken.png"
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, path)
    assert list(tmp_path.iterdir()) == []


def test_curve_figures_one_panel_per_protocol_and_stage(tmp_path):
    cmc = pd.DataFrame({"rank": [1, 2, 3], "baseline_official": [0.2, 0.4, 0.5],
                        "joint_official": [0.5, 0.7, 0.8], "baseline_torchreid": [0.3, 0.5, 0.6],
                        "joint_torchreid": [0.6, 0.8, 0.9]})
    fig = cmc_figure(cmc, "tiny")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["tiny (official)", "tiny (torchreid)"]
    assert [line.get_label() for line in axes[0].lines] == ["baseline", "joint"]
    assert list(axes[1].lines[1].get_ydata()) == pytest.approx([60, 80, 90])  # percent
    # per-epoch means as pipeline.curves.read_means gives them
    means = pd.DataFrame({"loss": [3.0, 1.0], "id_loss": [2.0, 0.5], "diversity": [1.0, 0.5]},
                         index=pd.RangeIndex(1, 3, name="epoch"))
    fig = loss_figure({"pretrain": means, "joint": means})
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["pretrain", "joint"]
    loss = next(line for line in axes[0].lines if line.get_label() == "loss")
    assert list(loss.get_xdata()) == [1, 2] and list(loss.get_ydata()) == [3.0, 1.0]
    save_figure(fig, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
    # a stage that trained spatial maps: their entropy and saturated share on a second axis
    watched = means.assign(map_entropy=[0.4, 0.1], map_saturated=[0.3, 0.9])
    axes = loss_figure({"pretrain": means, "attention spatial": watched}).get_axes()
    assert len(axes) == 3  # the second panel's twin
    lines = {line.get_label(): list(line.get_ydata()) for line in axes[2].lines}
    assert lines == {"map entropy (nats)": pytest.approx([0.4, 0.1]),
                     "map entries < 1e-6 (share)": pytest.approx([0.3, 0.9])}


# --- the summary of the statistics over splits --------------------------------------------------


def test_attention_statistics_averaged_over_splits():
    def evaluation(split, overlap, entropy):
        return {"dataset": "prid2011", "split": split,
                "attention": {"spatial": {"overlap": overlap, "entropy": entropy},
                              "joint": {"overlap": None, "entropy": 1.0}}}

    summary = summarize_attention([evaluation(0, 0.2, 2.0), evaluation(1, 0.4, 1.0),
                                   {"dataset": "mars", "split": 0}])  # older file: no stats
    spatial = summary["prid2011"]["spatial"]
    assert spatial["overlap"] == pytest.approx({"mean": 0.3, "std": 0.1})
    assert spatial["entropy"] == pytest.approx({"mean": 1.5, "std": 0.5})
    assert summary["prid2011"]["joint"]["overlap"] is None  # K = 1: no pair of maps
    assert summary["mars"] == {}


def test_ground_truth_statistics_averaged_over_splits_where_every_split_has_them():
    """The model-level ground-truth measures (synthetic set) averaged like overlap and entropy;
    per-head ones never (other splits, other heads); none where a split lacks them."""
    def evaluation(split, person, corr, covered):
        return {"dataset": "synthetic", "split": split,
                "attention": {"joint": {"overlap": 0.1, "entropy": 1.0, "person": person,
                                        "occluder": 0.0, "background": 1 - person,
                                        "parts_covered": covered, "visibility_corr": corr,
                                        "head1_part": "torso", "head1_person": person}}}

    joint = summarize_attention([evaluation(0, 0.75, 0.5, 2),
                                 evaluation(1, 0.25, None, 4)])["synthetic"]["joint"]
    assert joint["person"] == pytest.approx({"mean": 0.5, "std": 0.25})
    assert joint["parts_covered"] == pytest.approx({"mean": 3.0, "std": 1.0})
    assert joint["visibility_corr"] is None  # undefined in one split
    assert not any(key.startswith("head") for key in joint)
    older = {"dataset": "synthetic", "split": 2,
             "attention": {"joint": {"overlap": 0.1, "entropy": 1.0}}}
    assert set(summarize_attention([evaluation(0, 0.75, 0.5, 2), older])["synthetic"]["joint"]) \
        == {"overlap", "entropy"}
