"""Tests of pipeline/datasets (every reader but ``synthetic``): miniature trees in the real layouts
(each reader's docstring and docs/datasets.md describe them), built in ``tmp_path``, read into the
canonical tables."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from pipeline.datasets import IMAGE_SETS, VIDEO_SETS, index_images, index_video, num_splits
from pipeline.datasets.common import by_frame_number, screen_frames
from pipeline.errors import DatasetError
from pipeline.params import IMAGE_DATASETS, VIDEO_DATASETS, VIDEO_SPLITS
from pipeline.tables import (
    IMAGE_COLUMNS,
    VIDEO_COLUMNS,
    experiment_origin,
    load_video_index,
    pool_sets,
    resolve_data_path,
    save_video_index,
    video_table,
)


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_IMAGE = _tiny_png()  # an 8 x 4 image; only CUHK03 cares what the pixels are


def touch(path: Path) -> Path:
    """Write a tiny image at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TINY_IMAGE)
    return path


def check_video_table(table: pd.DataFrame) -> None:
    """The canonical video table: exact columns and dtypes, frames non-empty lists of Paths, no
    label maps (a real set has none)."""
    assert list(table.columns) == VIDEO_COLUMNS
    assert [str(t) for t in table.dtypes] == ["int64", "int64", "object", "bool", "object",
                                              "object"]
    assert set(table["subset"]) <= {"train", "test"}
    for frames in table["frames"]:
        assert isinstance(frames, list)
        assert frames
        assert all(isinstance(f, Path) for f in frames)
    assert all(labels == [] for labels in table["labels"])


def rows(table: pd.DataFrame) -> list[tuple]:
    """(pid, camid, subset, is_query) per tracklet, as plain Python values, in table order."""
    return [(int(r.pid), int(r.camid), r.subset, bool(r.is_query)) for r in table.itertuples()]


# --- MARS -----------------------------------------------------------------------------------------

def mars_name(pid: int, cam: int, tracklet: int, frame: int) -> str:
    """``0001C1T0001F001.jpg``; the junk pid -1 is spelled ``00-1``."""
    return f"{'00-1' if pid == -1 else f'{pid:04d}'}C{cam}T{tracklet:04d}F{frame:03d}.jpg"


# (pid, camid, frame numbers in name-file order) per tracklet; the frames are deliberately out of
# order, and 1000 > 999 sorts before 999 by name ("F1000." < "F999.")
MARS_TRAIN = [(1, 1, [3, 1, 2]), (2, 2, [1000, 998, 999]), (2, 5, [7])]
MARS_TEST = [(3, 1, [2, 1]), (3, 4, [5, 4, 6]), (-1, 2, [1, 2]), (0, 3, [9, 8]), (4, 6, [1])]
MARS_QUERY = [1, 5]  # 1-based rows of the test tracks: pid 3 camera 1, pid 4 camera 6


def save_mat(path: Path, key: str, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {key: np.asarray(array, dtype=np.float64)})


def make_mars(root: Path) -> dict[str, list[list[Path]]]:
    """A MARS tree; returns the expected frames (numerically sorted) of every train/test track."""
    expected = {}
    for subset, tracks in (("train", MARS_TRAIN), ("test", MARS_TEST)):
        names, info, frames = [], [], []
        for t, (pid, cam, numbers) in enumerate(tracks, start=1):
            track = [mars_name(pid, cam, t, f) for f in numbers]
            info.append([len(names) + 1, len(names) + len(track), pid, cam])
            names += track
            folder = root / f"bbox_{subset}" / track[0][:4]
            frames.append([touch(folder / mars_name(pid, cam, t, f)) for f in sorted(numbers)])
        (root / "info").mkdir(parents=True, exist_ok=True)
        (root / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
        save_mat(root / "info" / f"tracks_{subset}_info.mat", f"track_{subset}_info", info)
        expected[subset] = frames
    save_mat(root / "info" / "query_IDX.mat", "query_IDX", [MARS_QUERY])
    return expected


def test_mars_reads_tracks_query_flags_and_junk(tmp_path):
    """Every track is one row (junk -1 and distractor 0 kept), queries are the query_IDX rows, and
    frames are sorted by their frame number, not by name-file or name order."""
    expected = make_mars(tmp_path)
    table = index_video("mars", tmp_path, 0)
    check_video_table(table)
    assert rows(table) == (
        [(pid, cam, "train", False) for pid, cam, _ in MARS_TRAIN]
        + [(pid, cam, "test", i + 1 in MARS_QUERY) for i, (pid, cam, _) in enumerate(MARS_TEST)])
    assert list(table["frames"]) == expected["train"] + expected["test"]
    assert [f.name for f in table["frames"][1]] == [
        "0002C2T0002F998.jpg", "0002C2T0002F999.jpg", "0002C2T0002F1000.jpg"]
    junk = tmp_path / "bbox_test" / "00-1"
    assert table["frames"][5] == [junk / "00-1C2T0003F001.jpg", junk / "00-1C2T0003F002.jpg"]


def _remove(relative: str):
    return lambda root: shutil.rmtree(root / relative)


def _rewrite(relative: str, text: str):
    return lambda root: (root / relative).write_text(text)


def _mat(relative: str, key: str, array):
    return lambda root: save_mat(root / relative, key, array)


@pytest.mark.parametrize(("breaker", "message"), [
    (_remove("info"), r"info/"),
    (_remove("bbox_test"), r"bbox_test/"),
    (_mat("info/tracks_test_info.mat", "wrong", [[1, 1, 1, 1]]),
     r"tracks_test_info\.mat: expected the key 'track_test_info'"),
    (_mat("info/query_IDX.mat", "queries", [[1]]), r"query_IDX\.mat: expected the key 'query_IDX'"),
    (_mat("info/tracks_train_info.mat", "track_train_info", [[1, 9, 1, 1]]),
     r"tracks_train_info\.mat: track \[1, 9\] is outside the 7 names of train_name\.txt"),
    (_mat("info/tracks_train_info.mat", "track_train_info", [[0, 1, 1, 1]]),
     r"tracks_train_info\.mat: track \[0, 1\]"),
    (_mat("info/query_IDX.mat", "query_IDX", [[1, 6]]), r"query_IDX\.mat: query indices"),
    (_mat("info/query_IDX.mat", "query_IDX", [[0]]), r"query_IDX\.mat: query indices"),
    (_rewrite("info/test_name.txt", "0003C1T0001F001.jpg\n../x.jpg\n"),
     r"test_name\.txt: '\.\./x\.jpg' is not a plain image file name"),
], ids=["no-info", "no-bbox_test", "tracks-key", "query-key", "track-past-names", "track-start-0",
    "query-past-end", "query-0", "name-with-separator"])
def test_mars_rejects_broken_trees(tmp_path, breaker, message):
    """Missing folders, a .mat without its key, tracks or queries out of range and a name that
    leaves its folder are DatasetErrors naming the file / key / folder."""
    make_mars(tmp_path)
    breaker(tmp_path)
    with pytest.raises(DatasetError, match=message):
        index_video("mars", tmp_path)


def test_mars_has_one_split(tmp_path):
    """MARS has one fixed split: any split_id but 0 is refused."""
    make_mars(tmp_path)
    with pytest.raises(DatasetError, match="split_id must be 0, got 1"):
        index_video("mars", tmp_path, 1)


# --- iLIDS-VID ------------------------------------------------------------------------------------

ILIDS_PEOPLE = [1, 2, 4, 7, 9, 12]  # folder numbers have gaps, as in the real set
ILIDS_FRAMES = [100000, 317, 99999, 1002]  # by name: 00317, 01002, 100000, 99999
ILIDS_SPLITS = [[3, 1, 5, 2, 4, 6],  # split 0: test = 3rd, 1st, 5th sorted folder = 4, 1, 9
                [2, 4, 6, 1, 3, 5]]  # split 1: test = 2, 7, 12
ILIDS_SPLIT_FILE = Path("train-test people splits") / "train_test_splits_ilidsvid.mat"
ILIDS_CAM2 = Path("i-LIDS-VID") / "sequences" / "cam2"


def make_ilidsvid(root: Path) -> None:
    for cam, person, frame in itertools.product((1, 2), ILIDS_PEOPLE, ILIDS_FRAMES):
        folder = root / "i-LIDS-VID" / "sequences" / f"cam{cam}" / f"person{person:03d}"
        touch(folder / f"cam{cam}_person{person:03d}_{frame:05d}.png")
    save_mat(root / ILIDS_SPLIT_FILE, "ls_set", ILIDS_SPLITS)


@pytest.mark.parametrize(("split_id", "test_people"), [(0, {1, 4, 9}), (1, {2, 7, 12})])
def test_ilidsvid_follows_the_split_rows(tmp_path, split_id, test_people):
    """The first half of ls_set row ``split_id`` (1-based indices into the sorted person folders)
    is the test half; query = cam1 of the test people, gallery = their cam2; frames numeric."""
    make_ilidsvid(tmp_path)
    table = index_video("ilidsvid", str(tmp_path), split_id)
    check_video_table(table)
    expected = [(p, cam, "test" if p in test_people else "train", p in test_people and cam == 1)
                for p in ILIDS_PEOPLE for cam in (1, 2)]
    assert sorted(rows(table)) == sorted(expected)
    folder = tmp_path / "i-LIDS-VID" / "sequences" / "cam2" / "person007"
    frames = table[(table["pid"] == 7) & (table["camid"] == 2)]["frames"].item()
    assert frames == [folder / f"cam2_person007_{f:05d}.png" for f in sorted(ILIDS_FRAMES)]


@pytest.mark.parametrize(("breaker", "split_id", "message"), [
    (lambda root: shutil.rmtree(root / "i-LIDS-VID"), 0, r"i-LIDS-VID/sequences"),
    (lambda root: save_mat(root / ILIDS_SPLIT_FILE, "ls_set", [[1, 2, 3, 4, 5, 7]]), 0,
     r"indices up to 7, but .*cam1 holds 6 people"),
    (lambda root: save_mat(root / ILIDS_SPLIT_FILE, "splits", ILIDS_SPLITS), 0, r"'ls_set'"),
    (lambda root: None, 2, r"split_id must be in \[0, 2\), got 2"),
    (lambda root: None, -1, r"split_id must be in \[0, 2\), got -1"),
    (lambda root: [f.unlink() for f in (root / ILIDS_CAM2 / "person004").iterdir()], 0,
     r"pid 4 camera 2 has no frames"),
    (lambda root: save_mat(root / ILIDS_SPLIT_FILE, "ls_set", [[1, 2, 3, 3, 5, 6]]), 0,
     r"split 0 lists a person index more than once"),
], ids=["wrong-root", "index-7-of-6", "no-ls_set", "split-2", "split--1", "empty-tracklet",
        "repeated-person"])
def test_ilidsvid_rejects_broken_trees(tmp_path, breaker, split_id, message):
    """Wrong root, a split naming person 7 of 6, a split file without ls_set, split_id out of
    range and an empty tracklet are DatasetErrors."""
    make_ilidsvid(tmp_path)
    breaker(tmp_path)
    with pytest.raises(DatasetError, match=message):
        index_video("ilidsvid", tmp_path, split_id)


# --- PRID2011 -------------------------------------------------------------------------------------

PRID_ELIGIBLE = [1, 2, 3, 4, 5, 6, 8, 9]
# person -> (frames in cam_a, frames in cam_b); 0 = no folder
PRID_PEOPLE = {**{p: (27 + p, 27) for p in PRID_ELIGIBLE},
               7: (30, 26),   # too short in cam_b
               10: (40, 0),   # only in cam_a
               201: (30, 30)}  # beyond the 200 shared people: a different person in each camera


def make_prid(root: Path) -> None:
    for person, counts in PRID_PEOPLE.items():
        for cam, count in zip(("cam_a", "cam_b"), counts, strict=True):
            folder = root / "prid_2011" / "multi_shot" / cam / f"person_{person:04d}"
            for frame in range(1, count + 1):
                touch(folder / f"{frame:04d}.png")


def people(table: pd.DataFrame, subset: str) -> set[int]:
    return set(table.loc[table["subset"] == subset, "pid"])


def test_prid_seeded_splits_cover_the_eligible_people(tmp_path):
    """Without a split file: halves of equal size, disjoint, covering exactly the people with >= 27
    frames in both cameras among 1..200; query = cam_a of the test people; frames numeric."""
    make_prid(tmp_path)
    table = index_video("prid2011", tmp_path, 0)
    check_video_table(table)
    train, test = people(table, "train"), people(table, "test")
    assert len(train) == len(test) == 4
    assert not train & test
    assert train | test == set(PRID_ELIGIBLE)
    assert sorted(rows(table)) == sorted(
        (p, cam, "test" if p in test else "train", p in test and cam == 1)
        for p in PRID_ELIGIBLE for cam in (1, 2))
    frames = table[(table["pid"] == 3) & (table["camid"] == 1)]["frames"].item()
    folder = tmp_path / "prid_2011" / "multi_shot" / "cam_a" / "person_0003"
    assert frames == [folder / f"{f:04d}.png" for f in range(1, 31)]


def test_prid_seeded_splits_are_reproducible_and_differ(tmp_path):
    """The same split_id gives the same table twice; the 10 splits are not all the same."""
    make_prid(tmp_path)
    first, again = index_video("prid2011", tmp_path, 3), index_video("prid2011", tmp_path, 3)
    pd.testing.assert_frame_equal(first, again)
    tests = [frozenset(people(index_video("prid2011", tmp_path, s), "test")) for s in range(10)]
    assert tests[0] != tests[1]
    assert len(set(tests)) > 2


def test_prid_split_id_out_of_range(tmp_path):
    """Without a split file there are 10 seeded splits."""
    make_prid(tmp_path)
    with pytest.raises(DatasetError, match=r"split_id must be in \[0, 10\), got 10"):
        index_video("prid2011", tmp_path, 10)


PRID_SPLITS = [{"train": [1, 2, 3, 4], "test": ["person_0005", "person_0006", 8, 9]},
               {"train": ["person_0009", 8, 6, 5], "test": [4, 3, 2, 1]}]


@pytest.mark.parametrize(("split_id", "train", "test"), [
    (0, {1, 2, 3, 4}, {5, 6, 8, 9}),
    (1, {5, 6, 8, 9}, {1, 2, 3, 4}),
])
def test_prid_split_file_is_used_as_given(tmp_path, split_id, train, test):
    """splits_prid2011.json (ints or person_NNNN names) decides the halves exactly."""
    make_prid(tmp_path)
    (tmp_path / "splits_prid2011.json").write_text(json.dumps(PRID_SPLITS))
    table = index_video("prid2011", tmp_path, split_id)
    check_video_table(table)
    assert people(table, "train") == train
    assert people(table, "test") == test
    assert set(table.loc[table["is_query"], "pid"]) == test
    assert set(table.loc[table["is_query"], "camid"]) == {1}


@pytest.mark.parametrize("split", [
    {"train": [1, 2, 3, 4], "test": [4, 5, 6, 8]},  # person 4 in both halves
    {"train": [1, 2, 2, 3], "test": [5, 6, 8, 9]},  # person 2 twice
])
def test_prid_split_file_repeating_people(tmp_path, split):
    """A person listed twice, or in both train and test, is refused rather than silently kept."""
    make_prid(tmp_path)
    (tmp_path / "splits_prid2011.json").write_text(json.dumps([split]))
    with pytest.raises(DatasetError, match="more than once"):
        index_video("prid2011", tmp_path, 0)


@pytest.mark.parametrize("person", [7, 10, 201, "person_0999"])
def test_prid_split_file_naming_ineligible_people(tmp_path, person):
    """A split naming a person without 27 frames in both cameras (or beyond 200) is refused and
    the error lists that person."""
    make_prid(tmp_path)
    splits = [{"train": [1, 2, 3, 4], "test": [5, 6, 8, person]}]
    (tmp_path / "splits_prid2011.json").write_text(json.dumps(splits))
    number = int(str(person).removeprefix("person_"))
    with pytest.raises(DatasetError, match=rf"splits_prid2011\.json: .*\[{number}\]"):
        index_video("prid2011", tmp_path, 0)


@pytest.mark.parametrize(("text", "split_id"), [
    ("{not json", 0),
    ('[{"train": [1, 2]}]', 0),  # no "test"
    ('{"train": [1], "test": [2]}', 0),  # not a list of splits
    (json.dumps(PRID_SPLITS), 2),  # only two splits
    (json.dumps(PRID_SPLITS), -1),  # negative split_id must not pick the last split
    ('[{"train": [1.5], "test": [2]}]', 0),
], ids=["not-json", "no-test", "not-a-list", "split-2-of-2", "split--1", "float-person"])
def test_prid_malformed_split_file(tmp_path, text, split_id):
    """A split file that is not a list of {"train", "test"} person lists names the file."""
    make_prid(tmp_path)
    (tmp_path / "splits_prid2011.json").write_text(text)
    with pytest.raises(DatasetError, match=r"splits_prid2011\.json"):
        index_video("prid2011", tmp_path, split_id)


def test_prid_missing_root(tmp_path):
    """A root without prid_2011/multi_shot names the folder it expected."""
    with pytest.raises(DatasetError, match=r"prid_2011/multi_shot"):
        index_video("prid2011", tmp_path, 0)


# --- DukeMTMC-VideoReID ---------------------------------------------------------------------------

# (folder, pid, tracklet, camera, frame numbers, name style)
DUKEV = [("train", 1, 1, 6, [10000, 9998, 9999], "plain"),  # by name: F10000 < F9998
         ("train", 2, 3, 2, [5, 1], "underscore"),
         ("query", 1, 5, 1, [2, 1, 3], "underscore"),
         ("gallery", 1, 6, 6, [1], "plain"),
         ("gallery", 9, 7, 8, [4, 3], "underscore")]


def dukev_name(pid: int, cam: int, frame: int, style: str) -> str:
    if style == "plain":
        return f"{pid:04d}C{cam}F{frame:04d}X30823.jpg"
    return f"{pid:04d}_C{cam}_F{frame:04d}_X30823.jpg"


def make_dukev(root: Path) -> list[list[Path]]:
    expected = []
    for folder, pid, tracklet, cam, frames, style in DUKEV:
        base = root / "DukeMTMC-VideoReID" / folder / f"{pid:04d}" / f"{tracklet:04d}"
        expected.append([touch(base / dukev_name(pid, cam, f, style)) for f in sorted(frames)])
    return expected


def test_dukev_reads_both_name_styles(tmp_path):
    """Camera from either name style, query/gallery -> test, is_query for query/ only, frames
    sorted by frame number."""
    expected = make_dukev(tmp_path)
    table = index_video("dukev", tmp_path)
    check_video_table(table)
    assert rows(table) == [(pid, cam, "train" if folder == "train" else "test", folder == "query")
                           for folder, pid, _, cam, *_ in DUKEV]
    assert list(table["frames"]) == expected
    assert table["frames"][0][-1].name == "0001C6F10000X30823.jpg"


@pytest.mark.parametrize(("breaker", "message"), [
    (lambda root: (root / "DukeMTMC-VideoReID" / "gallery" / "0009" / "0008").mkdir(),
     r"gallery/0009/0008: empty tracklet folder"),
    (lambda root: shutil.rmtree(root / "DukeMTMC-VideoReID" / "query"), r"query/"),
    (lambda root: touch(root / "DukeMTMC-VideoReID" / "train" / "0002" / "0003" / "cam2.jpg"),
     r"cam2\.jpg: cannot parse a frame number"),
], ids=["empty-tracklet", "no-query", "unparsable-name"])
def test_dukev_rejects_broken_trees(tmp_path, breaker, message):
    """An empty tracklet folder, a missing query/ folder and an unparsable name are errors."""
    make_dukev(tmp_path)
    breaker(tmp_path)
    with pytest.raises(DatasetError, match=message):
        index_video("dukev", tmp_path)


def test_dukev_has_one_split(tmp_path):
    """DukeMTMC-VideoReID has one fixed split."""
    make_dukev(tmp_path)
    with pytest.raises(DatasetError, match="split_id must be 0, got 1"):
        index_video("dukev", tmp_path, 1)


# --- image sets -----------------------------------------------------------------------------------

# name -> (folder under the root, {file name: (pid, camid) or None when the file must be skipped})
IMAGE_TREES = {
    "market1501": ("Market-1501-v15.09.15/bounding_box_train", {
        "0002_c1s1_000451_03.jpg": (2, 1), "0002_c2s1_000301_01.jpg": (2, 2),
        "0007_c6s4_002202_01.jpg": (7, 6), "-1_c1s1_000401_03.jpg": None,  # junk
        "0000_c3s1_000551_01.jpg": None, "Thumbs.db": None}),  # distractor, not an image
    "dukemtmcreid": ("DukeMTMC-reID/bounding_box_train", {
        "0001_c2_f0046182.jpg": (1, 2), "0001_c5_f0051341.jpg": (1, 5),
        "0012_c8_f0100000.jpg": (12, 8)}),
    "cuhk01": ("campus", {
        "0001001.png": (1, 0), "0001002.png": (1, 0), "0001003.png": (1, 1),
        "0001004.png": (1, 1), "0971003.png": (971, 1)}),
    "viper": ("VIPeR", {
        "cam_a/000_45.bmp": (1, 0), "cam_a/002_0.bmp": (2, 0), "cam_a/010_90.bmp": (3, 0),
        "cam_b/000_90.bmp": (1, 1), "cam_b/002_180.bmp": (2, 1), "cam_b/010_0.bmp": (3, 1)}),
    "cuhksysu": ("cropped_images", {
        "p11422_s16929_1.jpg": (11422, 0), "p11422_s16930_2.jpg": (11422, 0),
        "p5_s1_1.jpg": (5, 0)}),
    "3dpes": ("RGB", {
        "001_1_1316.bmp": (1, 1), "001_3_1320.bmp": (1, 3), "192_2_77.bmp": (192, 2)}),
}


def make_images(root: Path, name: str) -> list[tuple[int, int, Path]]:
    """The tree of IMAGE_TREES[name]; returns the expected (pid, camid, path) rows, sorted."""
    folder, files = IMAGE_TREES[name]
    for file in files:
        touch(root / folder / file)
    return sorted((*label, root / folder / file) for file, label in files.items() if label)


@pytest.mark.parametrize("name", list(IMAGE_TREES))
def test_image_sets_parse_pid_and_camera(tmp_path, name):
    """pid and camera come from each set's naming; junk (-1), distractors (0) and non-images are
    skipped; the table has exactly the columns pid, camid (int64) and path."""
    expected = make_images(tmp_path, name)
    table = index_images(name, tmp_path)
    assert list(table.columns) == IMAGE_COLUMNS
    assert [str(t) for t in table.dtypes[:2]] == ["int64", "int64"]
    assert sorted(zip(table["pid"], table["camid"], table["path"], strict=True)) == expected


@pytest.mark.parametrize(("name", "bad_file", "message"), [
    ("market1501", "c1s1_000451.jpg", r"c1s1_000451\.jpg: expected a name like 0002_c1s1"),
    ("dukemtmcreid", "0001-c2.jpg", r"0001-c2\.jpg: expected a name like"),
    ("cuhk01", "001001.png", r"001001\.png: expected a name of 7 digits"),
    ("viper", "cam_b/011_0.bmp", r"cam_a has 3 images and cam_b 4"),
    ("cuhksysu", "s16929_1.jpg", r"s16929_1\.jpg: expected a name like p11422"),
    ("3dpes", "view1.bmp", r"view1\.bmp: expected a name like"),
])
def test_image_sets_reject_bad_names(tmp_path, name, bad_file, message):
    """A file the set's naming cannot parse (VIPeR: unequal cameras) is a DatasetError."""
    make_images(tmp_path, name)
    touch(tmp_path / IMAGE_TREES[name][0] / bad_file)
    with pytest.raises(DatasetError, match=message):
        index_images(name, tmp_path)


@pytest.mark.parametrize(("name", "where"), [
    *((name, folder) for name, (folder, _) in IMAGE_TREES.items() if name != "viper"),
    ("viper", "VIPeR/cam_a/"), ("cuhk03", "cuhk03_release/cuhk-03.mat")])
def test_image_sets_missing_folder(tmp_path, name, where):
    """An empty root is a DatasetError naming the folder (or file) the set lives in."""
    with pytest.raises(DatasetError, match=re.escape(where)):
        index_images(name, tmp_path)


def test_market_layout_with_only_junk_is_empty(tmp_path):
    """A folder with junk and distractors only yields no identities: an error, not an empty
    table."""
    touch(tmp_path / "Market-1501-v15.09.15" / "bounding_box_train" / "-1_c1s1_000401_03.jpg")
    with pytest.raises(DatasetError, match="no images found"):
        index_images("market1501", tmp_path)


# --- CUHK03 ---------------------------------------------------------------------------------------

def cuhk03_image(seed: int) -> np.ndarray:
    """A (H=6, W=4, 3) image whose every pixel differs: a transpose or flip cannot go unseen."""
    return (np.arange(6 * 4 * 3).reshape(6, 4, 3) * 3 + seed).astype(np.uint8)


# pair -> person -> {view (0-based): image seed}; the views not listed are MATLAB empty cells
CUHK03_CELLS = [[{0: 1, 1: 2, 5: 3}, {2: 4, 7: 5}],
                [{9: 6, 4: 7}]]


def write_cuhk03(path: Path, keys=("labeled", "detected")) -> None:
    """A cuhk-03.mat as MATLAB v7.3 stores it: each key a (1, pairs) cell of references to
    (10, persons) cells of references to images stored transposed as (3, W, H); an empty cell is
    the uint64 array of its dimensions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        counter = itertools.count()

        def store(data) -> h5py.Reference:
            return refs.create_dataset(f"r{next(counter)}", data=data).ref

        for k, key in enumerate(keys):
            top = mat.create_dataset(key, (1, len(CUHK03_CELLS)), dtype=h5py.ref_dtype)
            for p, persons in enumerate(CUHK03_CELLS):
                pair = refs.create_dataset(f"pair{k}{p}", (10, len(persons)), dtype=h5py.ref_dtype)
                for j, views in enumerate(persons):
                    for view in range(10):
                        if view in views:
                            image = cuhk03_image(views[view] + 100 * k)
                            pair[view, j] = store(image.transpose(2, 1, 0))
                        else:
                            pair[view, j] = store(np.zeros(2, dtype=np.uint64))
                top[0, p] = pair.ref


def test_cuhk03_writes_pngs_with_pids_and_cameras(tmp_path):
    """Every non-empty view of both versions becomes a PNG with the right pixels (H, W, 3), pid
    (p+1)*10000 + j+1 and camera 0 for views 1-5, 1 for views 6-10; empty views are skipped."""
    write_cuhk03(tmp_path / "cuhk03_release" / "cuhk-03.mat")
    table = index_images("cuhk03", tmp_path)
    assert list(table.columns) == IMAGE_COLUMNS
    assert [str(t) for t in table.dtypes[:2]] == ["int64", "int64"]
    out = tmp_path / "cuhk03_release" / "images"
    expected = sorted(
        ((p + 1) * 10000 + j + 1, view // 5, out / key / f"{p + 1}_{j + 1:03d}_{view + 1:02d}.png",
         seed + 100 * k)
        for k, key in enumerate(("labeled", "detected"))
        for p, persons in enumerate(CUHK03_CELLS)
        for j, views in enumerate(persons) for view, seed in views.items())
    assert len(table) == len(expected) == 14
    assert sorted(zip(table["pid"], table["camid"], table["path"], strict=True)) == [
        e[:3] for e in expected]
    for *_, path, seed in expected:
        np.testing.assert_array_equal(np.asarray(Image.open(path)), cuhk03_image(seed))


def test_cuhk03_reuses_written_pngs(tmp_path):
    """A second call keeps the PNGs already written instead of decoding the .mat again."""
    write_cuhk03(tmp_path / "cuhk03_release" / "cuhk-03.mat")
    first = index_images("cuhk03", tmp_path)
    marked = first["path"][0]
    marked.write_bytes(TINY_IMAGE)
    again = index_images("cuhk03", tmp_path)
    pd.testing.assert_frame_equal(first, again)
    assert marked.read_bytes() == TINY_IMAGE


def test_cuhk03_without_detected(tmp_path):
    """A .mat lacking one of the two versions names the missing key."""
    write_cuhk03(tmp_path / "cuhk03_release" / "cuhk-03.mat", keys=("labeled",))
    with pytest.raises(DatasetError, match=r"cuhk-03\.mat: expected the key 'detected'"):
        index_images("cuhk03", tmp_path)


def test_cuhk03_not_hdf5(tmp_path):
    """A file that is not HDF5 (e.g. a pre-v7.3 .mat) is a DatasetError, not an OSError."""
    path = tmp_path / "cuhk03_release" / "cuhk-03.mat"
    path.parent.mkdir()
    path.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" + bytes(200))
    with pytest.raises(DatasetError, match=r"cuhk-03\.mat: not a readable MATLAB v7\.3"):
        index_images("cuhk03", tmp_path)


# --- pooling, registry, helpers -------------------------------------------------------------------

def test_pool_sets_gives_each_dataset_pid_its_own_id():
    """Global ids 0..C-1, one per (dataset, local pid): pid 1 of "a" and of "b" differ."""
    table_a = pd.DataFrame({"pid": [1, 1, 5], "camid": [0, 1, 0], "path": ["a1", "a2", "a3"]})
    table_b = pd.DataFrame({"pid": [1, 7], "camid": [2, 0], "path": ["b1", "b2"]})
    pooled = pool_sets({"a": table_a, "b": table_b})
    assert {"pid", "dataset", "local_pid", "camid", "path"} <= set(pooled.columns)
    assert list(pooled["path"]) == ["a1", "a2", "a3", "b1", "b2"]
    assert list(pooled["dataset"]) == ["a", "a", "a", "b", "b"]
    assert list(pooled["local_pid"]) == [1, 1, 5, 1, 7]
    assert list(pooled["camid"]) == [0, 1, 0, 2, 0]
    ids = dict(zip(zip(pooled["dataset"], pooled["local_pid"], strict=True), pooled["pid"],
                   strict=True))
    assert sorted(ids.values()) == [0, 1, 2, 3]
    assert pooled["pid"][0] == pooled["pid"][1]
    assert ids["a", 1] != ids["b", 1]


@pytest.mark.parametrize(("name", "splits"), [
    ("mars", 1), ("ilidsvid", 10), ("prid2011", 10), ("dukev", 1), ("synthetic", 1)])
def test_num_splits(name, splits):
    """Standard protocols: 10 splits for iLIDS-VID and PRID2011, one for the others; the one
    place that says so is pipeline.params (which checks data.splits against it)."""
    assert num_splits(name) == splits == VIDEO_SPLITS[name]


def test_registries_match_params():
    """The readers cover exactly the names params.yaml accepts."""
    assert sorted(VIDEO_SETS) == sorted(VIDEO_DATASETS)
    assert sorted(IMAGE_SETS) == sorted(IMAGE_DATASETS)


@pytest.mark.parametrize(("call", "kind", "known"), [
    (lambda: index_video("nope", "."), "video", VIDEO_SETS),
    (lambda: num_splits("nope"), "video", VIDEO_SETS),
    (lambda: index_images("nope", "."), "image", IMAGE_SETS),
], ids=["index_video", "num_splits", "index_images"])
def test_unknown_dataset_names(call, kind, known):
    """An unknown name is refused with the name repeated and the known names listed."""
    with pytest.raises(DatasetError, match=rf"unknown {kind} dataset 'nope'; known: "
                                           + re.escape(", ".join(known))):
        call()


def test_by_frame_number_sorts_numerically_whatever_the_order():
    """Sorted by the captured number, not by name or by input order; a name without one fails."""
    names = ["x_F10.jpg", "x_F9.jpg", "x_F100.jpg", "x_F2.jpg"]
    for order in itertools.permutations(names):
        assert [p.name for p in by_frame_number(map(Path, order), r"F(\d+)\.")] == [
            "x_F2.jpg", "x_F9.jpg", "x_F10.jpg", "x_F100.jpg"]
    with pytest.raises(DatasetError, match=r"x\.jpg: cannot parse a frame number"):
        by_frame_number([Path("x.jpg")], r"F(\d+)\.")


@pytest.mark.parametrize(("subset", "is_query", "frames", "message"), [
    ("train", True, [Path("a.jpg")], "a query tracklet is not in the test subset"),
    ("test", False, [], "tracklet of pid 3 camera 2 has no frames"),
])
def test_video_table_invariants(subset, is_query, frames, message):
    """The canonical video table refuses a query outside the test subset and an empty tracklet."""
    row = {"pid": 3, "camid": 2, "subset": subset, "is_query": is_query, "frames": frames}
    with pytest.raises(DatasetError, match=message):
        video_table([row], Path("somewhere"))


# --- data paths in DVC experiment workspaces ------------------------------------------------------


def test_experiment_origin_is_the_project_above_dvc_tmp_exps(tmp_path):
    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12"
    workspace.mkdir(parents=True)
    assert experiment_origin(workspace) == project.resolve()
    assert experiment_origin(project) is None
    assert experiment_origin(tmp_path / "exps") is None


def test_relative_data_path_missing_in_a_workspace_comes_from_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data" / "raw" / "synthetic").mkdir(parents=True)
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert resolve_data_path("data/raw") == project.resolve() / "data" / "raw"
    assert resolve_data_path("data/other") == Path("data/other")  # neither has it: unchanged
    (workspace / "data" / "raw").mkdir(parents=True)
    assert resolve_data_path("data/raw") == Path("data/raw")  # the workspace's own wins
    monkeypatch.chdir(project)
    assert resolve_data_path("data/raw") == Path("data/raw")


def test_index_records_the_relative_root_and_reads_through_a_workspace(tmp_path, monkeypatch):
    project = tmp_path / "project"
    root = project / "data" / "raw" / "set"
    rows = [{"pid": 1, "camid": c, "subset": "test", "is_query": c == 1,
             "frames": [root / f"{c}_{i}.jpg" for i in range(2)]} for c in (1, 2)]
    index = tmp_path / "split_0.json"
    save_video_index(video_table(rows, index), root, index, recorded_root=Path("data/raw/set"))
    assert json.loads(index.read_text())["root"] == "data/raw/set"
    root.mkdir(parents=True)
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    table = load_video_index(index)
    assert table["frames"][0] == [root.resolve() / "1_0.jpg", root.resolve() / "1_1.jpg"]


def test_index_whose_root_is_gone_says_how_to_prepare_it_again(tmp_path, monkeypatch):
    root = tmp_path / "raw" / "set"
    rows = [{"pid": 1, "camid": c, "subset": "test", "is_query": c == 1,
             "frames": [root / f"{c}.jpg"]} for c in (1, 2)]
    index = tmp_path / "split_0.json"
    save_video_index(video_table(rows, index), root, index)
    with pytest.raises(DatasetError, match=r"split_0.json: the dataset root .*raw/set .*does not "
                                           r"exist.*dvc repro --force download"):
        load_video_index(index)


def test_index_of_a_frame_outside_the_root_is_refused(tmp_path):
    rows = [{"pid": 1, "camid": c, "subset": "test", "is_query": c == 1,
             "frames": [tmp_path / "elsewhere" / f"{c}.jpg"]} for c in (1, 2)]
    index = tmp_path / "split_0.json"
    with pytest.raises(DatasetError, match="not under the dataset root"):
        save_video_index(video_table(rows, index), tmp_path / "raw", index)
    assert not index.exists()


# --- label maps: the optional column of the video table -------------------------------------------


def labelled_rows(root: Path) -> list[dict]:
    """Two tracklets of two frames with label maps under ``root/labels``, and one without."""
    rows = [{"pid": 1, "camid": c, "subset": "test", "is_query": c == 1,
             "frames": [touch(root / "frames" / f"{c}_{i}.jpg") for i in range(2)],
             "labels": [touch(root / "labels" / f"{c}_{i}.png") for i in range(2)]}
            for c in (1, 2)]
    return [*rows, {"pid": 2, "camid": 1, "subset": "train", "is_query": False,
                    "frames": [touch(root / "frames" / "3_0.jpg")]}]


def test_index_round_trip_keeps_label_maps(tmp_path):
    """Label maps are stored relative to the root like frames, only where a tracklet has them,
    and come back as paths parallel to the frames; a tracklet without them reads back with []."""
    root = tmp_path / "raw"
    index = tmp_path / "split_0.json"
    table = video_table(labelled_rows(root), index)
    assert list(table.columns) == VIDEO_COLUMNS
    assert table["labels"][2] == []
    save_video_index(table, root, index)
    records = json.loads(index.read_text())["tracklets"]
    assert records[0]["labels"] == ["labels/1_0.png", "labels/1_1.png"]
    assert "labels" not in records[2]
    back = load_video_index(index)
    assert back["labels"].tolist() == table["labels"].tolist()
    assert back["frames"].tolist() == table["frames"].tolist()


def test_index_of_a_real_set_has_no_label_maps_and_old_files_read(tmp_path):
    """A table without label maps writes the index it always wrote (no labels key), and an index
    file from before the column existed reads back with empty label lists."""
    root = tmp_path / "raw"
    rows = [{"pid": 1, "camid": c, "subset": "test", "is_query": c == 1,
             "frames": [touch(root / f"{c}.jpg")]} for c in (1, 2)]
    index = tmp_path / "split_0.json"
    save_video_index(video_table(rows, index), root, index)
    content = json.loads(index.read_text())
    assert all(set(r) == {"pid", "camid", "subset", "is_query", "frames"}
               for r in content["tracklets"])
    assert load_video_index(index)["labels"].tolist() == [[], []]


def test_index_refuses_label_maps_leaving_the_root(tmp_path):
    root = tmp_path / "raw"
    rows = labelled_rows(root)
    index = tmp_path / "split_0.json"
    outside = [{**rows[0], "labels": [tmp_path / "elsewhere.png"] * 2}]
    with pytest.raises(DatasetError, match="not under the dataset root"):
        save_video_index(video_table(outside, index), root, index)
    save_video_index(video_table(rows, index), root, index)
    content = json.loads(index.read_text())
    content["tracklets"][0]["labels"][1] = "../elsewhere.png"
    index.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        load_video_index(index)


def test_video_table_refuses_label_maps_not_one_per_frame(tmp_path):
    rows = labelled_rows(tmp_path)
    rows[1]["labels"] = rows[1]["labels"][:1]
    with pytest.raises(DatasetError, match="camera 2 has 2 frames but 1 label maps"):
        video_table(rows, tmp_path)


def test_screening_keeps_label_maps_parallel_to_the_frames(tmp_path):
    """A bad frame left out takes its label map with it; a tracklet without maps keeps none."""
    rows = labelled_rows(tmp_path)
    rows[0]["frames"][0].write_bytes(b"")  # tracklet 0 loses frame 0, and its label map
    table = video_table(rows, tmp_path)
    kept, counts = screen_frames(table, "skip", "set split 0")
    assert counts == {"frames": 1, "tracklets": 0}
    assert kept["frames"][0] == [rows[0]["frames"][1]]
    assert kept["labels"][0] == [rows[0]["labels"][1]]
    assert kept["labels"][1] == rows[1]["labels"]
    assert kept["labels"][2] == []
