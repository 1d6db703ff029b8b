"""Tests of pipeline/features.py (the res5c HDF5 cache, feature extraction) and of the cached
clips of pipeline/data.py that read it.

Small and CPU-only: tracklets of 1 to 7 frames of 32x16 pixels written as PNG and JPEG files, a
tiny conv + BatchNorm "backbone" (4 channels on a 4x2 grid) and one ResNet-18 case.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.testing import assert_close

from pipeline.attention_stats import read_parts
from pipeline.data import (
    CachedClipDataset,
    eval_loader,
    load_frame,
    train_labels,
    train_loader,
    workers_for,
)
from pipeline.distributed import batches as distributed_batches
from pipeline.errors import CacheError, ParamsError
from pipeline.features import (
    cache_attrs,
    embed,
    label_fractions,
    open_cache,
    select_frames,
    sha256_file,
    write_cache,
)
from pipeline.model import DRSA, Backbone
from pipeline.params import ModelParams, TrainParams
from pipeline.sampling import restricted_random_sample
from pipeline.tables import LABELS

SIZE = (32, 16)  # (H, W) of the frames
N = 3  # frames per clip
ATTRS = {"checkpoint_sha256": "abc123", "backbone": "tiny", "last_stride": 2}
# (pid, camid, is_query, frames) of each tracklet; one-frame tracklets included
TRACKLETS = {
    "train": [(10, 0, False, 1), (10, 1, False, 4), (11, 0, False, 7), (12, 1, False, 2),
              (11, 1, False, 3), (12, 0, False, 5)],
    "test": [(20, 0, True, 3), (20, 1, False, 5), (-1, 1, False, 1), (21, 0, False, 6)],
}


class TinyBackbone(nn.Module):
    """(B, 3, 32, 16) -> (B, 4, 4, 2), with a BatchNorm whose running statistics are not the
    defaults, so that a forward pass in training mode gives other grids than in eval mode.
    ``fail_after``: raise on every call after that many (the probe of write_cache is call 1)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) / 8)
            self.conv.bias.copy_(torch.randn(4, generator=generator))
            self.bn.running_mean.copy_(torch.randn(4, generator=generator))
            self.bn.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
        self.fail_after, self.calls = fail_after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("backbone broke")
        return torch.relu(self.bn(self.conv(x)))


def write_frames(root: Path) -> pd.DataFrame:
    """One video table with a train and a test subset; frames alternate PNG and JPEG."""
    rng = np.random.default_rng(0)
    rows = []
    for subset, tracklets in TRACKLETS.items():
        for t, (pid, camid, is_query, length) in enumerate(tracklets):
            frames = []
            for i in range(length):
                path = root / subset / f"{t:02d}_{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(path)
                frames.append(str(path))
            rows.append({"pid": pid, "camid": camid, "subset": subset, "is_query": is_query,
                         "frames": frames})
    return pd.DataFrame(rows)


def split(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Subset tables as the cache stage passes them (filtered, index not reset)."""
    return {subset: table[table["subset"] == subset] for subset in ("train", "test")}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pd.DataFrame:
    return write_frames(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def cache(table, tmp_path_factory) -> Path:
    """A complete cache of every frame, written by the tiny backbone two frames at a time."""
    path = tmp_path_factory.mktemp("cache") / "all.h5"
    write_cache(path, TinyBackbone(), split(table), SIZE, ATTRS, max_frames=0, batch_size=2)
    return path


# --- select_frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_frames", "cap", "expected"), [
    (5, 0, [0, 1, 2, 3, 4]),  # cap 0: every frame
    (1, 0, [0]),
    (3, 3, [0, 1, 2]),  # F <= cap: every frame
    (2, 5, [0, 1]),
    (10, 4, [0, 3, 6, 9]),  # linspace(0, 9, 4) = 0, 3, 6, 9
    (7, 2, [0, 6]),
    (100, 5, [0, 25, 50, 74, 99]),  # 0, 24.75, 49.5, 74.25, 99 rounded
    (9, 1, [0]),
])
def test_select_frames_examples(num_frames, cap, expected):
    """All frames without a cap or when the tracklet fits; else evenly spaced positions."""
    assert select_frames(num_frames, cap).tolist() == expected


def test_select_frames_over_a_cap_spans_the_tracklet():
    """F > cap >= 2: exactly cap unique increasing positions, the first and the last included."""
    for num_frames in range(1, 60):
        for cap in range(2, 15):
            picks = select_frames(num_frames, cap)
            if num_frames <= cap:
                assert picks.tolist() == list(range(num_frames))
                continue
            assert len(picks) == cap, (num_frames, cap)
            assert (np.diff(picks) > 0).all()
            assert picks[0] == 0 and picks[-1] == num_frames - 1


# --- write_cache ----------------------------------------------------------------------------------


def test_cache_layout_and_attributes(cache, table):
    """Offsets partition the frames per tracklet, ids stored, grids fp16 one frame per chunk, and
    the attributes record the inputs plus the frame size and the cap."""
    with h5py.File(cache, "r") as f:
        assert dict(f.attrs) == {**ATTRS, "format": 1, "height": 32, "width": 16,
                                      "max_frames_per_tracklet": 0, "complete": True}
        for subset, rows in split(table).items():
            group = f[subset]
            lengths = [len(frames) for frames in rows["frames"]]
            assert group["offsets"].dtype == np.int64
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            assert group["offsets"][:].tolist() == offsets.tolist()
            assert group["frame_index"].dtype == np.int32
            assert group["frame_index"][:].tolist() == [i for n in lengths for i in range(n)]
            assert group["pids"][:].tolist() == [t[0] for t in TRACKLETS[subset]]
            assert group["camids"][:].tolist() == [t[1] for t in TRACKLETS[subset]]
            assert group["is_query"].dtype == bool
            assert group["is_query"][:].tolist() == [t[2] for t in TRACKLETS[subset]]
            grids = group["grids"]
            assert grids.dtype == np.float16
            assert grids.shape == (sum(lengths), 4, 4, 2)
            assert grids.chunks == (1, 4, 4, 2)


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_cached_grids_are_the_backbones_output_in_eval_mode(table, tmp_path, backbone):
    """Each cached grid is the backbone's output on its frame alone, in eval mode (the tiny
    backbone's BatchNorm would give other grids on batch statistics), rounded to fp16."""
    torch.manual_seed(0)
    net = TinyBackbone() if backbone == "tiny" else Backbone("resnet18")
    net.train()  # write_cache must switch to eval mode itself
    path = tmp_path / "cache.h5"
    write_cache(path, net, split(table), SIZE, ATTRS, batch_size=3)
    net.eval()
    with h5py.File(path, "r") as f, torch.no_grad():
        for subset, rows in split(table).items():
            frames = [frame for tracklet in rows["frames"] for frame in tracklet]
            expected = net(torch.stack([load_frame(p, SIZE) for p in frames]))  # (F, D, h, w)
            stored = torch.from_numpy(f[subset]["grids"][:]).float()
            assert stored.shape == expected.shape
            assert expected.abs().max() > 0
            assert_close(stored, expected, rtol=2e-3, atol=1e-3)


def test_cache_honours_the_frame_cap(table, tmp_path):
    """max_frames=2: at most two evenly spaced frames per tracklet, those select_frames picks,
    and the grids are those of the picked frames."""
    path = tmp_path / "capped.h5"
    net = TinyBackbone()
    write_cache(path, net, split(table), SIZE, ATTRS, max_frames=2, batch_size=4)
    with h5py.File(path, "r") as f, torch.no_grad():
        assert f.attrs["max_frames_per_tracklet"] == 2
        for subset, rows in split(table).items():
            picks = [select_frames(len(frames), 2) for frames in rows["frames"]]
            lengths = [len(p) for p in picks]
            assert lengths == [min(t[3], 2) for t in TRACKLETS[subset]]
            assert f[subset]["offsets"][:].tolist() == np.concatenate(
                [[0], np.cumsum(lengths)]).tolist()
            assert f[subset]["frame_index"][:].tolist() == np.concatenate(picks).tolist()
            frames = [tracklet[i] for tracklet, p in zip(rows["frames"], picks, strict=True)
                      for i in p]
            expected = net.eval()(torch.stack([load_frame(p, SIZE) for p in frames]))
            assert_close(torch.from_numpy(f[subset]["grids"][:]).float(), expected,
                         rtol=2e-3, atol=1e-3)


# --- parts: the ground truth of label maps, per cached frame and grid cell -----------------------

P = len(LABELS)
TORSO, LEGS, OCCLUDER = LABELS.index("torso"), LABELS.index("legs"), LABELS.index("occluder")


def label_map(position: int) -> np.ndarray:
    """A hand-made (64, 32, 2) label map, twice the input size (so the cache resizes it) in 2 x 2
    blocks (so that nearest neighbour is exact): without the occluder, torso on the top half and
    legs below; visible, at an even ``position`` in the tracklet, the occluder over the top 16
    rows, half the torso; at an odd one, nothing hidden."""
    clear = np.full((32, 16), LEGS, np.uint8)
    clear[:16] = TORSO
    visible = clear.copy()
    if position % 2 == 0:
        visible[:8] = OCCLUDER
    return np.stack([visible, clear], axis=-1).repeat(2, axis=0).repeat(2, axis=1)


@pytest.fixture(scope="module")
def labelled(table, tmp_path_factory) -> pd.DataFrame:
    """``table`` with a label map (``label_map``) for each frame."""
    root = tmp_path_factory.mktemp("labels")
    labels = []
    for t, frames in enumerate(table["frames"]):
        labels.append([root / f"{t:02d}_{i:03d}.png" for i in range(len(frames))])
        for i, path in enumerate(labels[-1]):
            Image.fromarray(label_map(i)).save(path)
    return table.assign(labels=labels)


def test_label_fractions_match_a_brute_force_count():
    """Pixel (r, c) counts in cell (r * h // H, c * w // W); each cell's fractions sum to 1."""
    labels = np.random.default_rng(0).integers(0, P, (37, 23))
    fractions = label_fractions(labels, (8, 4), P)
    counts = np.zeros((P, 8, 4))
    for r in range(37):
        for c in range(23):
            counts[labels[r, c], r * 8 // 37, c * 4 // 23] += 1
    assert_close(fractions, counts / counts.sum(axis=0, keepdims=True))
    assert_close(fractions.sum(axis=0), np.ones((8, 4)))


@pytest.mark.parametrize("max_frames", [0, 2])
def test_cache_of_a_labelled_table_holds_exact_parts(labelled, tmp_path, max_frames):
    """For each cached frame (the cap's picks, in frame_index order), the share of each label in
    each of the 4 x 2 cells of 8 x 8 input pixels, and the visible share of each label: torso
    1/2 where the occluder hides its top half, 1 elsewhere; NaN for labels without pixels."""
    path = tmp_path / "parts.h5"
    write_cache(path, TinyBackbone(), split(labelled), SIZE, ATTRS, max_frames=max_frames,
                batch_size=4, part_names=LABELS)
    with open_cache(path, ATTRS) as f:
        assert tuple(f.attrs["part_names"]) == LABELS
        for subset in ("train", "test"):
            assert f[subset]["parts"].dtype == f[subset]["visibility"].dtype == np.float16
            parts, visibility, names = read_parts(f, subset)
            positions = f[subset]["frame_index"][:]
            assert parts.shape == (len(positions), P, 4, 2)
            assert visibility.shape == (len(positions), P)
            assert names == LABELS
            for part, seen, position in zip(parts, visibility, positions, strict=True):
                expected = np.zeros((P, 4, 2))
                expected[TORSO, :2], expected[LEGS, 2:] = 1, 1
                if position % 2 == 0:
                    expected[TORSO, 0], expected[OCCLUDER, 0] = 0, 1
                assert np.array_equal(part, expected)
                assert np.array_equal(part.sum(axis=0), np.ones((4, 2)))
                assert seen[TORSO] == (0.5 if position % 2 == 0 else 1.0)
                assert seen[LEGS] == 1.0
                others = [p for p in range(P) if p not in (TORSO, LEGS)]
                assert np.isnan(seen[others]).all()  # background, occluder, absent labels
    assert read_parts(path, "test")[0].shape[1:] == (P, 4, 2)  # from a path too


def test_a_table_without_label_maps_writes_no_parts(cache, table, tmp_path):
    """A real set's tables (no labels column, or empty label lists as the index reads them):
    no parts, no part_names; read_parts says None and the cache opens as before."""
    assert read_parts(cache, "train") is None
    path = tmp_path / "real.h5"
    empty = table.assign(labels=[[] for _ in range(len(table))])
    write_cache(path, TinyBackbone(), split(empty), SIZE, ATTRS, batch_size=4, part_names=LABELS)
    with open_cache(path, ATTRS) as f:
        assert "part_names" not in f.attrs
        assert "parts" not in f["train"] and "visibility" not in f["test"]
        assert read_parts(f, "test") is None


def test_label_maps_need_names_all_tracklets_and_known_labels(labelled, tmp_path):
    with pytest.raises(CacheError, match="no part_names"):
        write_cache(tmp_path / "a.h5", TinyBackbone(), split(labelled), SIZE, ATTRS)
    mixed = labelled.copy()
    mixed.at[0, "labels"] = []
    with pytest.raises(CacheError, match="1 of the 6 train tracklets have no label maps"):
        write_cache(tmp_path / "b.h5", TinyBackbone(), split(mixed), SIZE, ATTRS,
                    part_names=LABELS)
    with pytest.raises(CacheError, match=f"label {OCCLUDER} in a label map of 8 labels"):
        write_cache(tmp_path / "c.h5", TinyBackbone(), split(labelled), SIZE, ATTRS,
                    part_names=LABELS[:-1])
    assert not any(tmp_path.glob("*.h5"))


def test_open_cache_refuses_parts_not_one_per_grid(labelled, tmp_path):
    path = tmp_path / "parts.h5"
    write_cache(path, TinyBackbone(), split(labelled), SIZE, ATTRS, part_names=LABELS)
    with h5py.File(path, "a") as f:
        _replace("test/visibility", np.zeros((15, P - 1), np.float16))(f)
    with pytest.raises(CacheError, match=r"test/visibility has shape \(15, 8\), expected "
                                         r"\(15, 9\): one per grid, for the 9 part_names"):
        open_cache(path, ATTRS)


# --- open_cache ---------------------------------------------------------------------------------


def test_open_cache_accepts_matching_expectations(cache):
    """The attributes the readers check, as the stages pass them (ints and strings)."""
    expect = {**ATTRS, "height": 32, "width": 16}
    with open_cache(cache, expect) as f:
        assert f["train/grids"].shape[0] == 22
    open_cache(cache, {}).close()


@pytest.mark.parametrize(("expect", "stored", "wanted"), [
    ({"checkpoint_sha256": "def456"}, "checkpoint_sha256='abc123'", "checkpoint_sha256='def456'"),
    ({"height": 64}, "height=32", "height=64"),
    ({**ATTRS, "width": 16, "backbone": "resnet50"}, "backbone='tiny'", "backbone='resnet50'"),
    ({"last_stride": 1}, "last_stride=2", "last_stride=1"),
    ({"no_such_attribute": 1}, "no_such_attribute=None", "no_such_attribute=1"),
])
def test_open_cache_refuses_other_inputs(cache, expect, stored, wanted):
    """A mismatch names the attribute with the stored and the expected value."""
    with pytest.raises(CacheError, match=f"{re.escape(stored)}.*{re.escape(wanted)}"):
        open_cache(cache, expect)


def test_open_cache_refuses_an_incomplete_file(cache, tmp_path):
    """A file without the ``complete`` attribute (its writer stopped) is refused."""
    path = tmp_path / "incomplete.h5"
    shutil.copy(cache, path)
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(path, ATTRS)


def _drop(f: h5py.File, name: str) -> None:
    del f[name]


def _replace(name: str, values) -> Callable[[h5py.File], None]:
    def replace(f: h5py.File) -> None:
        del f[name]
        f[name] = values
    return replace


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda f: _drop(f, "test"), "test/grids, test/offsets, test/frame_index, test/pids, "
                                 "test/camids, test/is_query missing"),
    (lambda f: _drop(f, "train/pids"), "train/pids missing"),
    (_replace("train/grids", np.zeros((22, 4), np.float16)),
     "train/grids has shape (22, 4), expected (frames, D, h, w)"),
    (_replace("train/offsets", np.array([0, 1, 5, 12, 14, 17])),
     "train/offsets do not start at 0, increase and end at its 22 grids"),
    (_replace("test/offsets", np.array([1, 4, 9, 10, 16])),
     "test/offsets do not start at 0, increase and end at its 15 grids"),
    (_replace("test/offsets", np.array([0, 4, 4, 10, 15])),
     "test/offsets do not start at 0, increase and end at its 15 grids"),
    (_replace("test/offsets", np.zeros(0, np.int64)),
     "test/offsets do not start at 0, increase and end at its 15 grids"),
    (_replace("test/pids", np.array([20, 20, -1])),
     "test/pids has shape (3,), expected (4,): one per tracklet"),
    (_replace("train/is_query", np.zeros((6, 1), bool)),
     "train/is_query has shape (6, 1), expected (6,): one per tracklet"),
    (_replace("train/frame_index", np.zeros(21, np.int32)),
     "train/frame_index has shape (21,), expected (22,): one per grid"),
])
def test_open_cache_refuses_a_complete_file_of_missing_or_short_datasets(cache, tmp_path, damage,
                                                                         problem):
    """Attributes that say complete over datasets that are missing, short or out of order: a
    CacheError naming the file and what is wrong, never an h5py KeyError or a wrong read later."""
    path = tmp_path / "damaged.h5"
    shutil.copy(cache, path)
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(CacheError) as caught:
        open_cache(path, ATTRS)
    assert str(caught.value) == (f"{path}: {problem}, though its attributes say complete; "
                                 "re-run the cache stage")


@pytest.mark.parametrize("content", [b"not an HDF5 file\n", b"", None])
def test_open_cache_refuses_what_is_not_hdf5(tmp_path, content):
    """Text, an empty file or no file at all: a CacheError, not an h5py OSError."""
    path = tmp_path / "cache.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CacheError, match="not a readable HDF5 feature cache"):
        open_cache(path, ATTRS)


def test_cache_attrs_hash_the_checkpoint(tmp_path):
    """The checkpoint's sha256 and the backbone's architecture from its stored config."""
    model = tmp_path / "finetune.pt"
    model.write_bytes(b"weights" * 1000)
    payload = {"model_params": {"backbone": "resnet18", "last_stride": 1, "K": 6}}
    assert sha256_file(model) == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert cache_attrs(model, payload) == {
        "checkpoint_sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
        "backbone": "resnet18", "last_stride": 1}



# --- the grid block (model.grid_block) -----------------------------------------------------------


def test_cache_attrs_record_the_grid_block_the_reader_asks_for(tmp_path):
    """With a grid block: recorded, ``last`` also for the name of the backbone's last block; a
    name the payload's backbone does not have is refused naming model.grid_block."""
    model = tmp_path / "finetune.pt"
    model.write_bytes(b"weights")
    payload = {"model_params": {"backbone": "mobilenet_v2", "last_stride": 1}}
    assert cache_attrs(model, payload, "features.16")["grid_block"] == "features.16"
    assert cache_attrs(model, payload, "features.18")["grid_block"] == "last"
    assert cache_attrs(model, payload, "last")["grid_block"] == "last"
    assert "grid_block" not in cache_attrs(model, payload)  # a reader that does not check it
    with pytest.raises(ParamsError, match=r"model\.grid_block: expected last or a block of "
                                          r"mobilenet_v2 .*features\.18; got 'layer3'"):
        cache_attrs(model, payload, "layer3")


def test_the_cache_records_its_grid_block_and_readers_of_another_refuse_it(table, tmp_path):
    """A cache of an earlier block stores ``grid_block``; a reader that expects another block is
    refused with the re-run message. A cache of the last block stores no attribute (its bytes are
    those of a cache written before the key existed) and reads as ``last``."""
    cut, last, old = tmp_path / "cut.h5", tmp_path / "last.h5", tmp_path / "old.h5"
    write_cache(cut, TinyBackbone(), split(table), SIZE, {**ATTRS, "grid_block": "layer3"})
    write_cache(last, TinyBackbone(), split(table), SIZE, {**ATTRS, "grid_block": "last"})
    write_cache(old, TinyBackbone(), split(table), SIZE, ATTRS)
    with h5py.File(cut, "r") as f:
        assert f.attrs["grid_block"] == "layer3"
    with h5py.File(last, "r") as f:
        assert "grid_block" not in f.attrs
    assert last.read_bytes() == old.read_bytes()
    open_cache(cut, {**ATTRS, "grid_block": "layer3"}).close()
    open_cache(last, {**ATTRS, "grid_block": "last"}).close()
    with pytest.raises(CacheError, match=re.escape(
            f"{cut}: made with grid_block='layer3', but this run expects grid_block='last': "
            "re-run the cache stage")):
        open_cache(cut, {**ATTRS, "grid_block": "last"})
    with pytest.raises(CacheError, match=re.escape(
            f"{old}: made with grid_block='last', but this run expects grid_block='layer2': "
            "re-run the cache stage")):
        open_cache(old, {**ATTRS, "grid_block": "layer2"})


def test_the_cache_stage_stores_the_grids_of_the_grid_block(table, tmp_path):
    """As dvc.yaml starts it, with model.grid_block layer3: the fine-tuned (whole) ResNet-18 run
    up to layer3, its grids (256 x 2 x 1 at 32x16, last stride 1) stored, the block recorded, and
    the grids those of the whole backbone's layer3 (fp16)."""
    import yaml

    from pipeline.checkpoints import export_model, load_exported
    from pipeline.model import build_model
    from pipeline.stages import cache as stage
    from pipeline.tables import save_video_index

    root = Path(table["frames"].iloc[0][0]).parents[1]
    index = tmp_path / "split_0.json"
    save_video_index(table, root, index)
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, K=2, embed_dim=16)
    torch.manual_seed(0)
    export_model(tmp_path / "finetune.pt", build_model(cfg, head="baseline"), cfg, "baseline")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"video": ["synthetic"], "image": [], "height": SIZE[0], "width": SIZE[1],
                 "num_workers": 0},
        "model": {"backbone": "resnet18", "last_stride": 1, "K": 2, "grid_block": "layer3"},
        "cache": {"batch_size": 4}, "runtime": {"device": "cpu"}}))
    out = tmp_path / "cache.h5"
    stage.main(["--params", str(params), "--index", str(index), "--model",
                str(tmp_path / "finetune.pt"), "--out", str(out)])
    whole, payload = load_exported(tmp_path / "finetune.pt")
    expect = {**cache_attrs(tmp_path / "finetune.pt", payload, "layer3"), "height": SIZE[0],
              "width": SIZE[1]}
    with open_cache(out, expect) as f:
        grids = f["test/grids"][()]
        frames = [Path(p) for fs in table.loc[table["subset"] == "test", "frames"] for p in fs]
    assert grids.shape == (len(frames), 256, 2, 1)
    captured = []
    whole.backbone.layer3.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        whole.backbone(torch.stack([load_frame(p, SIZE) for p in frames]))
    assert_close(torch.from_numpy(grids).float(), captured[0].half().float())
    with pytest.raises(CacheError, match="grid_block='layer3', but this run expects "
                                         "grid_block='last'"):
        open_cache(out, {**expect, "grid_block": "last"})


# --- interrupted writes ---------------------------------------------------------------------------


def test_interrupted_write_leaves_no_file(table, tmp_path):
    """A backbone failing after the first batch: the error propagates, and neither the cache
    nor its temporary file exists."""
    path = tmp_path / "sub" / "cache.h5"
    with pytest.raises(RuntimeError, match="backbone broke"):
        write_cache(path, TinyBackbone(fail_after=2), split(table), SIZE, ATTRS, batch_size=2)
    assert not path.exists()
    assert not (path.parent / ".cache.h5.tmp").exists()
    assert list(path.parent.iterdir()) == []


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from tests.test_features import ATTRS, SIZE, TinyBackbone, split, write_frames
from pipeline.features import write_cache

class Hang(TinyBackbone):
    def forward(self, x):
        if self.calls == 3:  # the probe and two batches are done: say so, then hang
            Path(sys.argv[2]).touch()
            time.sleep(600)
        return super().forward(x)

table = write_frames(Path(sys.argv[3]))
write_cache(sys.argv[1], Hang(), split(table), SIZE, ATTRS, max_frames=0, batch_size=2)
"""


@pytest.mark.slow
def test_a_killed_write_is_never_taken_for_a_cache_and_the_next_write_starts_over(cache,
                                                                                  tmp_path):
    """SIGKILL while the cache is written (no ``finally`` runs): the output path does not exist,
    only the temporary file, which no reader opens; the next write replaces it and gives the
    uninterrupted cache, byte for byte."""
    path, ready = tmp_path / "cache.h5", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path), str(ready),
                              str(tmp_path / "frames")], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not path.exists() and (tmp_path / ".cache.h5.tmp").exists()
    with pytest.raises(CacheError, match=r"incomplete feature cache|not a readable HDF5"):
        open_cache(tmp_path / ".cache.h5.tmp", {})  # had anything taken it for a cache
    write_cache(path, TinyBackbone(), split(write_frames(tmp_path / "frames2")), SIZE, ATTRS,
                max_frames=0, batch_size=2)
    assert sha256_file(path) == sha256_file(cache)
    assert not (tmp_path / ".cache.h5.tmp").exists()


def test_interrupted_rewrite_keeps_the_previous_cache(table, tmp_path):
    """A failed rewrite leaves an existing complete cache byte for byte as it was."""
    path = tmp_path / "cache.h5"
    write_cache(path, TinyBackbone(), split(table), SIZE, ATTRS, batch_size=8)
    before = sha256_file(path)
    with pytest.raises(RuntimeError, match="backbone broke"):
        write_cache(path, TinyBackbone(fail_after=2), split(table), SIZE,
                    {**ATTRS, "checkpoint_sha256": "new"}, batch_size=2)
    assert sha256_file(path) == before
    assert not (tmp_path / ".cache.h5.tmp").exists()
    open_cache(path, ATTRS).close()


# --- CachedClipDataset and embed ------------------------------------------------------------------


def test_cached_clips_at_test_time_take_each_chunks_first_frame(cache):
    """Item t: grids[offsets[t] + restricted_random_sample(F_t, N, False)], float32."""
    dataset = CachedClipDataset(cache, "test", N)
    with h5py.File(cache, "r") as f:
        grids, offsets = f["test/grids"][:], f["test/offsets"][:]
    assert len(dataset) == len(TRACKLETS["test"])
    for t in range(len(dataset)):
        clip, label, index = dataset[t]
        picks = restricted_random_sample(int(offsets[t + 1] - offsets[t]), N, False)
        assert clip.dtype == torch.float32 and clip.shape == (N, 4, 4, 2)
        assert torch.equal(clip, torch.from_numpy(grids[offsets[t] + np.array(picks)]).float())
        assert (label, index) == (-1, t)


def test_cached_clips_in_training_follow_their_seed(cache):
    """Item (t, seed): the frames restricted random sampling draws with that seed, all within
    tracklet t; the same seed gives the same clip, other seeds other clips; labels map pids."""
    pids = [t[0] for t in TRACKLETS["train"]]
    labels = train_labels(pids)
    dataset = CachedClipDataset(cache, "train", N, labels)
    with h5py.File(cache, "r") as f:
        grids, offsets = f["train/grids"][:], f["train/offsets"][:]
    assert dataset.labels == [labels[p] for p in pids] == [0, 0, 1, 2, 1, 2]
    t = 2  # 7 frames: chunks [0, 2), [2, 4), [4, 7)
    clips = []
    for seed in range(8):
        clip, label, index = dataset[(t, (seed, 0, 0, 0, 1))]
        rng = np.random.default_rng([seed, 0, 0, 0, 1])
        picks = np.array(restricted_random_sample(7, N, True, rng))
        assert torch.equal(clip, torch.from_numpy(grids[offsets[t] + picks]).float())
        assert torch.equal(clip, dataset[(t, (seed, 0, 0, 0, 1))][0])  # same seed, same clip
        tracklet = torch.from_numpy(grids[offsets[t]:offsets[t + 1]]).float()
        assert all((tracklet == frame).all(dim=(1, 2, 3)).any() for frame in clip)
        assert (label, index) == (1, t)
        clips.append(clip)
    assert any(not torch.equal(clips[0], other) for other in clips[1:])
    one_frame, _, _ = dataset[(0, (0, 0, 0, 0, 0))]  # a 1-frame tracklet repeats its frame
    assert torch.equal(one_frame, torch.from_numpy(grids[[0, 0, 0]]).float())


def batches(loader) -> list[tuple]:
    return [(clips, labels.tolist(), indices.tolist()) for clips, labels, indices in loader]


def assert_same_batches(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) > 0
    for (clips_a, labels_a, indices_a), (clips_b, labels_b, indices_b) in zip(a, b, strict=True):
        assert torch.equal(clips_a, clips_b)
        assert (labels_a, indices_a) == (labels_b, indices_b)


def test_cached_clips_in_worker_processes_match_the_main_process(cache):
    """Two workers, each opening the file lazily, give the batches of num_workers=0, for the
    test loader and for the seeded training loader; also when the main process has read the
    file already (its open handle is inherited by the forked workers)."""
    pids = [t[0] for t in TRACKLETS["train"]]
    cfg = TrainParams(identities_per_batch=2, instances_per_identity=2)

    def train_batches(dataset, num_workers):
        loader = train_loader(dataset, pids, cfg, seed=3, num_workers=num_workers)
        loader.batch_sampler.set_epoch(1)
        return batches(loader)

    labels = train_labels(pids)
    in_process = CachedClipDataset(cache, "train", N, labels, preload_bytes=0)  # from the file
    assert not in_process.in_memory
    expected = train_batches(in_process, 0)
    assert_same_batches(train_batches(CachedClipDataset(cache, "train", N, labels,
                                                        preload_bytes=0), 2), expected)
    assert_same_batches(train_batches(in_process, 2), expected)
    held = CachedClipDataset(cache, "train", N, labels)  # preloaded: the same batches
    assert held.in_memory
    assert_same_batches(train_batches(held, 0), expected)

    test = CachedClipDataset(cache, "test", N, preload_bytes=0)
    expected = batches(eval_loader(test, 3, 0))
    assert [i for _, _, indices in expected for i in indices] == [0, 1, 2, 3]
    assert_same_batches(batches(eval_loader(CachedClipDataset(cache, "test", N, preload_bytes=0),
                                            3, 2)), expected)
    assert_same_batches(batches(eval_loader(CachedClipDataset(cache, "test", N), 3, 0)), expected)


def test_a_dataset_in_memory_gets_no_loader_workers(cache):
    """Worker processes only add their start and the copies between processes when the grids
    are in memory; a subset read from the file keeps data.num_workers."""
    held, read = (CachedClipDataset(cache, "train", N, preload_bytes=b) for b in (1 << 30, 0))
    assert (workers_for(held, 2), workers_for(read, 2), workers_for(read, 0)) == (0, 2, 0)
    cfg = TrainParams(identities_per_batch=2, instances_per_identity=2)
    pids = [t[0] for t in TRACKLETS["train"]]
    assert train_loader(held, pids, cfg, seed=0, num_workers=2).num_workers == 0
    assert train_loader(read, pids, cfg, seed=0, num_workers=2).num_workers == 2
    assert eval_loader(held, 3, 2).num_workers == 0 and eval_loader(read, 3, 2).num_workers == 2


def test_embed_returns_every_item_in_loader_order(cache):
    """(num_items, E) embeddings, row i being the model's embedding of item i; the record of
    each batch (here its spatial maps) kept in batch order; no records without ``record``."""
    torch.manual_seed(0)
    model = DRSA(ModelParams(backbone="resnet18", init="scratch", K=2, d=8, embed_dim=16, N=N),
                 4).eval()
    dataset = CachedClipDataset(cache, "train", N)
    features, records = embed(model, eval_loader(dataset, 4, 0), torch.device("cpu"),
                              record=lambda out: out.spatial.numpy())
    assert isinstance(features, np.ndarray)
    assert [len(r) for r in records] == [len(b) for b in distributed_batches(len(dataset), 4)]
    with torch.no_grad():
        np.testing.assert_allclose(records[-1][-1], model(dataset[len(dataset) - 1][0][None])
                                   .spatial[0].numpy(), rtol=1e-5, atol=1e-6)
    assert embed(model, eval_loader(dataset, 4, 0), torch.device("cpu"))[1] == []
    assert features.shape == (len(dataset), 16) and features.dtype == np.float32
    with torch.no_grad():
        for i in range(len(dataset)):
            one = model(dataset[i][0][None]).embedding[0].numpy()
            np.testing.assert_allclose(features[i], one, rtol=1e-5, atol=1e-6)
    assert not np.allclose(features[0], features[2])  # the rows really differ


def test_write_cache_refuses_an_empty_subset(tmp_path):
    """A subset without tracklets is a clear error, and no file is left behind."""
    empty = pd.DataFrame(columns=["pid", "camid", "subset", "is_query", "frames"])
    backbone = Backbone("resnet18").eval()
    with pytest.raises(CacheError, match="no test tracklets"):
        write_cache(tmp_path / "c.h5", backbone, {"test": empty}, (32, 16), {})
    assert list(tmp_path.iterdir()) == []


def test_a_cache_larger_than_the_free_disk_fails_before_writing(table, tmp_path, monkeypatch):
    """24 frames of 4 x 4 x 2 fp16 grids, 64 MiB of headroom: 1 MB free is not enough; the error
    names the sizes and what to do, and nothing is written."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 ** 6))
    path = tmp_path / "cache.h5"
    with pytest.raises(CacheError, match=r"needs about 67 MB but .* has 1 MB free, no space left "
                                         r"on device: free some space, point data/cache"):
        write_cache(path, TinyBackbone(), split(table), SIZE, ATTRS, batch_size=2)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 ** 9))
    write_cache(path, TinyBackbone(), split(table), SIZE, ATTRS, batch_size=2)
    assert path.exists()


# --- the disk for a whole split matrix (the cache stage) -----------------------------------------

# frames of the tracklets of each split's fabricated index (cap 32: 3 + 5 + 32 = 40 cached)
MATRIX_LENGTHS = [3, 5, 40]


def fabricate_matrix(tmp_path: Path, splits: int = 3) -> tuple[str, str]:
    """Index files of ``splits`` splits of one set (frames named, not written: only their counts
    matter) and the patterns the cache stage gets from dvc.yaml."""
    from pipeline.tables import save_video_index

    root = tmp_path / "raw"
    root.mkdir()
    for k in range(splits):
        rows = [{"pid": t + 1, "camid": 1 + t % 2, "subset": ("train", "test")[t % 2],
                 "is_query": False, "frames": [root / f"{k}_{t}_{f:03d}.png" for f in range(n)]}
                for t, n in enumerate(MATRIX_LENGTHS)]
        save_video_index(pd.DataFrame(rows), root, tmp_path / "index" / f"split_{k}.json")
    (tmp_path / "cache").mkdir()
    return str(tmp_path / "index" / "split_{split}.json"), str(tmp_path / "cache" / "x-{split}.h5")


def free_disk(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def test_the_cache_stage_checks_the_disk_for_every_cache_of_the_matrix_not_yet_written(
        tmp_path, monkeypatch):
    from pipeline.stages.cache import check_matrix_space, unwritten_caches
    from pipeline.tables import load_video_index

    index, out = fabricate_matrix(tmp_path)
    own_index, own_out = Path(index.format(split=0)), Path(out.format(split=0))
    grid = (4, 2, 2)  # D x h x w: 16 float16 values, 32 bytes per frame
    one = (3 + 5 + 32) * 32  # cache.max_frames_per_tracklet 32
    margin = 64 << 20  # check_free_space's per-file allowance for HDF5's structures

    def check(caches):
        check_matrix_space(caches, grid, 32, own_out, load_video_index(own_index), out)

    caches = unwritten_caches(own_index, own_out, index, out, [0, 1, 2])
    assert list(caches) == [0, 1, 2]
    needed = int(3 * one * 1.02) + 3 * margin
    free_disk(monkeypatch, needed - 1)
    with pytest.raises(CacheError) as err:
        check(caches)
    assert str(err.value) == (
        f"{own_out}: writing the 3 feature caches of {out} not yet written (splits 0, 1, 2 of "
        f"data.splits; 120 frames of 4 x 2 x 2 float16 values) needs about "
        f"{needed / 1e6:.0f} MB but {own_out.parent} has {(needed - 1) / 1e6:.0f} MB free, no "
        "space left on device: free "
        "some space, point data/cache at a larger disk, or lower cache.max_frames_per_tracklet, "
        "or run fewer splits at a time (data.splits), then run the stage again")
    free_disk(monkeypatch, needed)
    check(caches)
    # a cache already written is on the disk already: it no longer counts
    Path(out.format(split=2)).write_bytes(b"written")
    caches = unwritten_caches(own_index, own_out, index, out, [0, 1, 2])
    assert list(caches) == [0, 1]
    free_disk(monkeypatch, int(2 * one * 1.02) + 2 * margin)
    check(caches)
    # without the patterns (a stage started by hand): its own cache alone
    assert unwritten_caches(own_index, own_out, None, None, [0, 1, 2]) == {
        None: (own_index, own_out)}


def test_the_cache_stage_fails_on_a_matrix_too_large_before_reading_a_frame(tmp_path,
                                                                            monkeypatch):
    """As dvc.yaml starts it: the grid comes from the loaded backbone (ResNet-18, last stride 1:
    512 x 2 x 1 at 32x16), the splits from data.splits; nothing is written."""
    import yaml

    from pipeline.checkpoints import export_model
    from pipeline.model import build_model
    from pipeline.stages import cache as stage

    index, out = fabricate_matrix(tmp_path, splits=4)
    cfg = ModelParams(backbone="resnet18", init="scratch", last_stride=1, K=2, embed_dim=16)
    export_model(tmp_path / "finetune.pt", build_model(cfg, head="baseline"), cfg, "baseline")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"video": ["prid2011"], "image": [], "splits": [0, 1, 3], "height": 32,
                 "width": 16, "num_workers": 0},
        "model": {"backbone": "resnet18", "last_stride": 1, "K": 2}}))
    free_disk(monkeypatch, 3 * (64 << 20))  # the HDF5 allowance of 3 caches, no byte for grids
    with pytest.raises(CacheError, match=(
            r"writing the 3 feature caches .* \(splits 0, 1, 3 of data\.splits; 144 frames of "
            r"512 x 2 x 1 float16 values\) needs about 202 MB")):
        stage.main(["--params", str(params), "--index", index.format(split=0), "--model",
                    str(tmp_path / "finetune.pt"), "--out", out.format(split=0),
                    "--matrix-index", index, "--matrix-out", out])
    assert list((tmp_path / "cache").iterdir()) == []
