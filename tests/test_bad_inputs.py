"""The bad-input catalogue (docs/bad-inputs.md): rows not covered by the module tests of their
code. Each bad input ends in one clear error naming the file or the key and what was expected,
no traceback from a stage, and nothing half-written."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.data import ClipDataset, eval_loader, load_frame
from pipeline.datasets import dukev, ilidsvid
from pipeline.datasets.common import screen_frames
from pipeline.datasets.mars import load_mat_key
from pipeline.download import extract
from pipeline.errors import (
    CacheError,
    CheckpointError,
    DatasetError,
    InputError,
    UnsafeArchiveError,
)
from pipeline.features import open_cache
from pipeline.model import backbone_state_from_file
from pipeline.stages.common import one_line
from pipeline.tables import load_image_index, load_video_index
from pipeline.train import load_exported


def jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path)
    return path


def damage(path: Path, how: str) -> Path:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "zero-byte": b"",
                      "not-an-image": b"hello"}[how])
    return path


# --- frames ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "not-an-image"])
def test_a_bad_frame_names_its_file(tmp_path, how):
    frame = damage(jpeg(tmp_path / "0001C1T0001F001.jpg"), how)
    with pytest.raises(DatasetError, match=r"0001C1T0001F001\.jpg: cannot read the image"):
        load_frame(frame, (32, 16))


def test_a_frame_gone_after_indexing_names_its_file(tmp_path):
    with pytest.raises(DatasetError, match=r"gone\.jpg: cannot read the image"):
        load_frame(tmp_path / "gone.jpg", (32, 16))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_frame_in_a_loader_worker_is_one_line(tmp_path, workers):
    """DataLoader workers re-raise with their traceback in the message; the stage prints only
    the original error."""
    frames = [str(jpeg(tmp_path / f"f{i}.jpg", i)) for i in range(3)]
    damage(Path(frames[1]), "truncated")
    loader = eval_loader(ClipDataset([frames], [0], 3, (32, 16)), 1, workers)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    assert one_line(caught.value).startswith(f"{frames[1]}: cannot read the image")
    assert "\n" not in one_line(caught.value) and "Traceback" not in one_line(caught.value)


def test_a_stage_reports_a_worker_error_in_one_line():
    err = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback "
                       "(most recent call last):\n  File \"x.py\", line 1, in f\n"
                       "pipeline.datasets.common.DatasetError: /d/f1.jpg: cannot read the image")
    assert one_line(err) == "/d/f1.jpg: cannot read the image"
    assert one_line(DatasetError("plain")) == "plain"


# --- dataset trees and split files ------------------------------------------------------------


def test_ilidsvid_stray_folder_is_named(tmp_path):
    sequences = tmp_path / "i-LIDS-VID" / "sequences"
    for person in ("person001", "person002", "notes"):
        (sequences / "cam1" / person).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"expected only person<number> folders.*'notes'"):
        ilidsvid.index(tmp_path, 0)


def test_dukev_non_numeric_identity_folder_is_named(tmp_path):
    base = tmp_path / "DukeMTMC-VideoReID"
    for folder in ("train", "query", "gallery"):
        (base / folder).mkdir(parents=True)
    (base / "train" / "backup").mkdir()
    with pytest.raises(DatasetError, match=r"backup: expected identity folders named by number"):
        dukev.index(tmp_path, 0)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + bytes(200), b"\x00" * 64])
def test_an_unreadable_mat_file_is_named(tmp_path, content):
    path = tmp_path / "tracks_test_info.mat"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"tracks_test_info\.mat: not a readable \.mat file"):
        load_mat_key(path, "track_test_info")


# --- archives -------------------------------------------------------------------------------------


def test_a_chain_of_links_leaving_the_target_is_refused(tmp_path):
    """Each link stays inside on its own; followed in turn they leave: tarfile's data filter
    refuses it, reported as an unsafe archive (nothing extracted, no temporary folder)."""
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:
        for name, target in (("a/b/d", "../.."), ("a/b/d/e", "../x")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        info = tarfile.TarInfo("a/b/d/e/f.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"chain\.tar"):
        extract(archive, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.tar"]


def test_a_damaged_archive_is_an_input_error(tmp_path):
    archive = tmp_path / "cut.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 100_000
        tf.addfile(info, io.BytesIO(bytes(100_000)))
    archive.write_bytes(buffer.getvalue()[:30_000])  # cut inside the member
    with pytest.raises(UnsafeArchiveError, match=r"cut\.tar"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- artifacts ------------------------------------------------------------------------------------


def test_a_truncated_cache_is_refused(tmp_path):
    path = tmp_path / "cache.h5"
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = True
        f["test/grids"] = np.zeros((64, 8, 4, 2), dtype=np.float16)
    path.write_bytes(path.read_bytes()[:2048])
    with pytest.raises(CacheError, match=r"cache\.h5: not a readable HDF5 feature cache"):
        open_cache(path, {})


def test_model_init_refuses_a_pickled_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state": {"w": torch.zeros(1)}, "hook": Path("/etc/passwd")}, path)
    with pytest.raises(InputError, match=r"model\.init: .*evil\.pt is not a loadable checkpoint"):
        backbone_state_from_file(path)


@pytest.mark.parametrize("payload", [torch.zeros(3), {"kind": "net"}, [1, 2]])
def test_an_export_that_is_not_a_model_is_refused(tmp_path, payload):
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: not a model exported by this"):
        load_exported(path)


# --- index files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("{}", "expected an index written by the index stage"),
    ("[1, 2]", "expected an index written by the index stage"),
    ('{"root": ".", "tracklets": [{"pid": 1}]}', "expected an index written by the index stage"),
    ("{not json", "not JSON"),
])
def test_a_malformed_index_is_named(tmp_path, content, message):
    path = tmp_path / "split_0.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_video_index(path)


@pytest.mark.parametrize("frame", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_index_entries_stay_under_the_dataset_root(tmp_path, frame):
    root = tmp_path / "root"
    root.mkdir()
    path = tmp_path / "split_0.json"
    path.write_text(json.dumps({"root": str(root), "tracklets": [
        {"pid": 1, "camid": 1, "subset": "train", "is_query": False, "frames": [frame]}]}))
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_video_index(path)
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"root": str(root),
                                  "images": [{"pid": 1, "camid": 1, "path": frame}]}))
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_image_index(images)


# --- data.bad_frames ------------------------------------------------------------------------------


def bad_tree(tmp_path: Path) -> pd.DataFrame:
    """Three tracklets: one sound, one with a zero-byte and a missing frame among sound ones,
    one whose only frame is not an image."""
    good = [str(jpeg(tmp_path / f"t0/{i}.jpg", i)) for i in range(2)]
    mixed = [str(jpeg(tmp_path / "t1/0.jpg")),
             str(damage(jpeg(tmp_path / "t1/1.jpg"), "zero-byte")),
             str(tmp_path / "t1/2.jpg"), str(jpeg(tmp_path / "t1/3.jpg"))]
    alone = [str(damage(jpeg(tmp_path / "t2/0.jpg"), "not-an-image"))]
    return pd.DataFrame({"pid": [1, 2, 3], "camid": [1, 1, 2], "subset": ["train"] * 3,
                         "is_query": [False] * 3, "frames": [good, mixed, alone]})


def test_bad_frames_fail_names_one_and_the_count(tmp_path):
    table = bad_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"mars split 0: 3 frame\(s\) listed in the index "
                                           r"cannot be used, e\.g\. frame .*t1/1\.jpg is empty"):
        screen_frames(table, "fail", "mars split 0")


def test_bad_frames_skip_leaves_them_out_and_counts(tmp_path, caplog):
    table = bad_tree(tmp_path)
    kept, counts = screen_frames(table, "skip", "mars split 0")
    assert counts == {"frames": 3, "tracklets": 1}
    assert kept["pid"].tolist() == [1, 2]
    assert [Path(f).name for f in kept["frames"][1]] == ["0.jpg", "3.jpg"]
    assert "leaving out 3 bad frame(s)" in caplog.text
    images = pd.DataFrame({"pid": [1, 1], "camid": [1, 2], "path": table["frames"][1][:2]})
    kept_images, counts = screen_frames(images, "skip", "market1501", column="path")
    assert len(kept_images) == 1 and counts["frames"] == 1


def test_sound_frames_pass_untouched(tmp_path):
    table = bad_tree(tmp_path).head(1)
    kept, counts = screen_frames(table, "fail", "x")
    assert kept is table and counts == {"frames": 0, "tracklets": 0}
