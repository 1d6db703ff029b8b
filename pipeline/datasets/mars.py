"""MARS: Motion Analysis and Re-identification Set.

Zheng et al., "MARS: A Video Benchmark for Large-Scale Person Re-identification", ECCV 2016.
Project page: http://www.liangzheng.com.cn/Project/project_mars.html (no stable download link:
supply ``bbox_train.zip`` and ``bbox_test.zip`` yourself). Split files (``info/``) come from the
MARS-evaluation repository.

Layout under the dataset root::

    bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg    e.g. 0001C1T0001F001.jpg
    bbox_test/<pid4>/...                                        pid 00-1 = junk, 0000 = distractor
    info/train_name.txt, info/test_name.txt                     one image name per line
    info/tracks_train_info.mat (track_train_info, 8298 x 4)     [start, end, pid, camid], 1-based
    info/tracks_test_info.mat  (track_test_info, 12180 x 4)     rows index the name files
    info/query_IDX.mat         (query_IDX, 1980)                1-based rows of track_test_info

Statistics: train 625 ids, 8,298 tracklets, 509,914 frames; test 636 ids + junk and distractors,
12,180 tracklets (870 junk, 3,248 distractor), 681,089 frames; 1,980 queries (one per pid and
camera), 6 cameras. One fixed split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from pipeline.datasets.common import by_frame_number, require
from pipeline.errors import DatasetError
from pipeline.tables import video_table

FRAME_PATTERN = r"F(\d+)\."
# The published frame counts (the statistics above): every frame of bbox_train/ and bbox_test/,
# junk and distractor tracklets included, as the cache holds them.
TRAIN_FRAMES, TEST_FRAMES = 509_914, 681_089


def load_mat_key(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB (< v7.3) file, or a DatasetError naming the file and the key."""
    require(path, f"the MARS split file {path.name}")
    try:
        content = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises MatReadError, ValueError, IndexError... on bad files
        raise DatasetError(f"{path}: not a readable .mat file ({type(err).__name__}: "
                           f"{err})") from err
    if key not in content:
        found = [k for k in content if not k.startswith("__")]
        raise DatasetError(f"{path}: expected the key {key!r}, found {found}")
    return np.asarray(content[key])


def read_names(path: Path) -> list[str]:
    """Image names, one per line; a name with a path separator is refused (it would leave the
    pid folder)."""
    require(path, f"the MARS name list {path.name}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = next((n for n in names if "/" in n or "\\" in n or n.startswith(".")), None)
    if bad is not None:
        raise DatasetError(f"{path}: {bad!r} is not a plain image file name")
    return names


def index(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The MARS tracklet table (one fixed split: ``split_id`` must be 0)."""
    if split_id != 0:
        raise DatasetError(f"MARS has one fixed split; split_id must be 0, got {split_id}")
    root = Path(root)
    info = require(root / "info", "the MARS split folder info/ (from MARS-evaluation)")
    rows = []
    query_rows = load_mat_key(info / "query_IDX.mat", "query_IDX").ravel().astype(int) - 1
    for subset in ("train", "test"):
        images = require(root / f"bbox_{subset}", f"the MARS image folder bbox_{subset}/")
        names = read_names(info / f"{subset}_name.txt")
        tracks = load_mat_key(info / f"tracks_{subset}_info.mat", f"track_{subset}_info")
        if tracks.ndim != 2 or tracks.shape[1] != 4:
            raise DatasetError(f"{info / f'tracks_{subset}_info.mat'}: expected an (n, 4) array "
                               f"[start, end, pid, camid], got shape {tracks.shape}")
        is_query = np.zeros(len(tracks), dtype=bool)
        if subset == "test":
            if len(query_rows) and (query_rows.min() < 0 or query_rows.max() >= len(tracks)):
                raise DatasetError(f"{info / 'query_IDX.mat'}: query indices must lie in "
                                   f"[1, {len(tracks)}]")
            is_query[query_rows] = True
        for (start, end, pid, camid), query in zip(tracks.astype(int), is_query, strict=True):
            if not 1 <= start <= end <= len(names):
                raise DatasetError(f"{info / f'tracks_{subset}_info.mat'}: track [{start}, {end}] "
                                   f"is outside the {len(names)} names of {subset}_name.txt")
            frames = [images / name[:4] / name for name in names[start - 1:end]]
            rows.append({"pid": pid, "camid": camid, "subset": subset, "is_query": bool(query),
                         "frames": by_frame_number(frames, FRAME_PATTERN)})
    return video_table(rows, root)
