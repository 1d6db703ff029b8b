"""PRID2011 (multi-shot).

Hirzer et al., "Person Re-Identification by Descriptive and Discriminative Classification",
SCIA 2011. Source: prid_2011.zip from
https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/PRID11/ (no md5 published).

Layout under the dataset root::

    prid_2011/multi_shot/{cam_a,cam_b}/person_NNNN/NNNN.png
    splits_prid2011.json            optional: [{"train": [...], "test": [...]}, ...]

Persons 1-200 appear in both cameras (cam_a has 385 people, cam_b 749). The standard protocol uses
the 178 of them with at least 27 frames in both cameras, split 10 times at random into 89 train and
89 test people. When ``splits_prid2011.json`` is present its splits are used as given (entries may
be person numbers or folder names such as ``person_0001``); otherwise 10 seeded splits are drawn.
Query = cam_a tracklets of the test people, gallery = their cam_b tracklets.

Statistics: 178 people, 356 tracklets, 2 cameras; 10 splits. The 200 people seen by both cameras
have 400 sequences of 5-675 frames, mean 100 (Wang et al., "Person Re-Identification by Video
Ranking", ECCV 2014).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets.common import by_frame_number, image_files, require
from pipeline.errors import DatasetError
from pipeline.params import VIDEO_SPLITS
from pipeline.tables import video_table

NUM_SPLITS = VIDEO_SPLITS["prid2011"]  # without a split file: seeded random splits

FRAME_PATTERN = r"(\d+)\.\w+$"
SHARED_PEOPLE = 200  # persons 1..200 are seen by both cameras
MIN_FRAMES = 27
# The published statistics of what the protocol draws from (Wang et al., ECCV 2014): the multi-shot
# sequences of the 200 people seen by both cameras, 400 sequences of 5-675 frames, mean 100. The
# 178 people of the protocol, whose sequences every split caches, hold somewhat fewer frames.
SHARED_SEQUENCES, MEAN_FRAMES = 2 * SHARED_PEOPLE, 100
SPLIT_SEED = 2011


def index(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The PRID2011 tracklet table for split ``split_id`` (0-9)."""
    root = Path(root)
    multi_shot = require(root / "prid_2011" / "multi_shot",
                         "the PRID2011 folder prid_2011/multi_shot (from prid_2011.zip)")
    frames = {cam: {} for cam in ("cam_a", "cam_b")}
    for cam in frames:
        for person in range(1, SHARED_PEOPLE + 1):
            folder = multi_shot / cam / f"person_{person:04d}"
            if folder.is_dir():
                frames[cam][person] = by_frame_number(image_files(folder), FRAME_PATTERN)
    eligible = sorted(p for p in frames["cam_a"] if p in frames["cam_b"]
                      and min(len(frames["cam_a"][p]), len(frames["cam_b"][p])) >= MIN_FRAMES)
    train, test = _split(root, eligible, split_id)
    rows = []
    for subset, people in (("train", train), ("test", test)):
        for person in people:
            for camid, cam in ((1, "cam_a"), (2, "cam_b")):
                rows.append({"pid": person, "camid": camid, "subset": subset,
                             "is_query": subset == "test" and cam == "cam_a",
                             "frames": frames[cam][person]})
    return video_table(rows, multi_shot)


def _split(root: Path, eligible: list[int], split_id: int) -> tuple[list[int], list[int]]:
    """(train people, test people) of split ``split_id``: from the JSON file when present, else a
    seeded random half of the eligible people."""
    path = root / "splits_prid2011.json"
    if not path.exists():
        if not 0 <= split_id < NUM_SPLITS:
            raise DatasetError(f"PRID2011: split_id must be in [0, {NUM_SPLITS}), got {split_id}")
        order = np.random.default_rng([SPLIT_SEED, split_id]).permutation(eligible)
        half = len(order) // 2
        return sorted(int(p) for p in order[half:2 * half]), sorted(int(p) for p in order[:half])
    if split_id < 0:  # a negative index would silently pick a split from the end of the list
        raise DatasetError(f"{path}: split_id must be >= 0, got {split_id}")
    try:
        splits = json.loads(path.read_text())
        split = splits[split_id]
        people = {name: [_person(p) for p in split[name]] for name in ("train", "test")}
    except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: expected a list of at least {split_id + 1} splits "
                           '{"train": [...], "test": [...]} of person numbers or folder names '
                           f"({type(err).__name__}: {err})") from err
    listed = people["train"] + people["test"]
    repeated = sorted({p for p in listed if listed.count(p) > 1})
    if repeated:
        raise DatasetError(f"{path}: split {split_id} lists people more than once (or in both "
                           f"train and test): {repeated[:10]}")
    unknown = sorted(set(listed) - set(eligible))
    if unknown:
        raise DatasetError(f"{path}: split {split_id} names people without a tracklet of at least "
                           f"{MIN_FRAMES} frames in both cameras: {unknown[:10]}")
    return people["train"], people["test"]


def _person(entry: int | str) -> int:
    if isinstance(entry, int):
        return entry
    return int(str(entry).removeprefix("person_"))
