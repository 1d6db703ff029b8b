"""DukeMTMC-VideoReID.

Wu et al., "Exploit the Unknown Gradually: One-Shot Video-Based Person Re-Identification by
Stepwise Learning", CVPR 2018, built on DukeMTMC (Ristani et al., ECCVW 2016). The dataset was
retracted by its authors and has no live link: use a copy you are entitled to.

Layout under the dataset root::

    DukeMTMC-VideoReID/{train,query,gallery}/<pid4>/<tracklet4>/<frame>.jpg
    frame names 0001C6F0099X30823.jpg or 0001_C6_F0099_X30823.jpg    (camera C, frame number F)

Query tracklets are the ``query`` folder (is_query), the gallery the ``gallery`` folder; both are
the test subset. Statistics: train 702 ids / 2,196 tracklets; query 702 ids / 702 tracklets;
gallery 1,110 ids (408 distractor ids) / 2,636 tracklets; 8 cameras. One fixed split.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.datasets.common import by_frame_number, image_files, require
from pipeline.errors import DatasetError
from pipeline.tables import video_table

FRAME_PATTERN = r"F(\d+)"
CAMERA_PATTERN = re.compile(r"^\d+_?C(\d+)")


def index(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The DukeMTMC-VideoReID tracklet table (one fixed split: ``split_id`` must be 0)."""
    if split_id != 0:
        raise DatasetError(f"DukeMTMC-VideoReID has one fixed split; split_id must be 0, got "
                           f"{split_id}")
    base = require(Path(root) / "DukeMTMC-VideoReID", "the folder DukeMTMC-VideoReID/")
    rows = []
    for folder, subset in (("train", "train"), ("query", "test"), ("gallery", "test")):
        for pid_dir in sorted(p for p in require(base / folder, f"{folder}/").iterdir()
                              if p.is_dir()):
            if not pid_dir.name.isdigit():
                raise DatasetError(f"{pid_dir}: expected identity folders named by number "
                                   f"(DukeMTMC-VideoReID/{folder}/0001/<tracklet>/...)")
            for tracklet in sorted(p for p in pid_dir.iterdir() if p.is_dir()):
                frames = by_frame_number(image_files(tracklet), FRAME_PATTERN)
                if not frames:
                    raise DatasetError(f"{tracklet}: empty tracklet folder")
                camera = CAMERA_PATTERN.match(frames[0].name)
                if camera is None:
                    raise DatasetError(f"{frames[0]}: cannot parse the camera from the name "
                                       "(expected 0001C6F0099X30823.jpg or "
                                       "0001_C6_F0099_X30823.jpg)")
                rows.append({"pid": int(pid_dir.name), "camid": int(camera.group(1)),
                             "subset": subset, "is_query": folder == "query", "frames": frames})
    return video_table(rows, base)
