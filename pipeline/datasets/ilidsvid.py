"""iLIDS-VID.

Wang et al., "Person Re-Identification by Video Ranking", ECCV 2014.
Source: http://www.eecs.qmul.ac.uk/~xiatian/iLIDS-VID/iLIDS-VID.tar
(md5 7752bd15b611558701bb0e2380ed8950).

Layout under the dataset root (the archive's own folders)::

    i-LIDS-VID/sequences/cam{1,2}/personNNN/cam1_person001_00317.png
    train-test people splits/train_test_splits_ilidsvid.mat     key ls_set, 10 x 300

Row ``split_id`` of ``ls_set`` lists 1-based indices into the sorted person folders; its first 150
are the test people. Query = the cam1 tracklets of the test people, gallery = their cam2 tracklets.

Statistics: 300 people, 600 tracklets (one per person and camera), 23-192 frames (mean 73),
2 cameras; per split 150 train, 150 query and 150 gallery ids; 10 splits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.datasets.common import by_frame_number, image_files, require
from pipeline.datasets.mars import load_mat_key
from pipeline.errors import DatasetError
from pipeline.tables import video_table

FRAME_PATTERN = r"_(\d+)\.\w+$"
# The published statistics (the dataset page and Wang et al., ECCV 2014): 600 sequences (300 people
# x 2 cameras) of 23-192 frames, mean 73, so about 600 x 73 frames in all; every split caches all
# of them (its 150 train and 150 test people).
SEQUENCES, MEAN_FRAMES = 600, 73
SPLIT_FILE = Path("train-test people splits") / "train_test_splits_ilidsvid.mat"


def index(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The iLIDS-VID tracklet table for split ``split_id`` (0-9)."""
    root = Path(root)
    sequences = require(root / "i-LIDS-VID" / "sequences", "the iLIDS-VID folder "
                        "i-LIDS-VID/sequences (from iLIDS-VID.tar)")
    people = sorted(p.name for p in require(sequences / "cam1", "camera folder cam1").iterdir()
                    if p.is_dir())
    strays = [p for p in people if not re.fullmatch(r"person\d+", p)]
    if strays:  # they would also shift the person indices the split file refers to
        raise DatasetError(f"{sequences / 'cam1'}: expected only person<number> folders "
                           f"(i-LIDS-VID/sequences/cam1/person001/...), found {strays[:5]}")
    splits = load_mat_key(root / SPLIT_FILE, "ls_set")
    if splits.ndim != 2 or splits.shape[1] % 2:
        raise DatasetError(f"{root / SPLIT_FILE}: expected ls_set of shape (splits, 2 x people), "
                           f"got {splits.shape}")
    if not 0 <= split_id < len(splits):
        raise DatasetError(f"iLIDS-VID: split_id must be in [0, {len(splits)}), got {split_id}")
    order = splits[split_id].astype(int)
    if order.min() < 1 or order.max() > len(people):
        raise DatasetError(f"{root / SPLIT_FILE}: split {split_id} names person indices up to "
                           f"{order.max()}, but {sequences / 'cam1'} holds {len(people)} people")
    if len(set(order)) != len(order):
        raise DatasetError(f"{root / SPLIT_FILE}: split {split_id} lists a person index more than "
                           "once")
    num_test = len(order) // 2
    subsets = {people[i - 1]: "test" for i in order[:num_test]}
    subsets |= {people[i - 1]: "train" for i in order[num_test:]}
    rows = []
    for person, subset in sorted(subsets.items()):
        for cam in (1, 2):
            folder = require(sequences / f"cam{cam}" / person, f"the cam{cam} tracklet of {person}")
            rows.append({"pid": int(person.removeprefix("person")), "camid": cam,
                         "subset": subset, "is_query": subset == "test" and cam == 1,
                         "frames": by_frame_number(image_files(folder), FRAME_PATTERN)})
    return video_table(rows, sequences)
