"""Dataset readers: every video and image re-id set rewritten into one canonical table.

``index_video(name, root, split_id)`` and ``index_images(name, root)`` dispatch on the dataset name
(the names ``params.yaml`` accepts under ``data.video`` and ``data.image``); everything downstream
reads only the canonical tables (see ``common``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.datasets import dukev, ilidsvid, images, mars, prid2011
from pipeline.datasets.common import IMAGE_COLUMNS, VIDEO_COLUMNS, DatasetError

__all__ = ["IMAGE_COLUMNS", "VIDEO_COLUMNS", "DatasetError", "index_images", "index_video",
           "num_splits", "pool_images"]


def _synthetic_video(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The synthetic set's video part, in the MARS layout under ``<root>/video``."""
    return mars.index(Path(root) / "video", split_id)


def _synthetic_images(root: Path) -> pd.DataFrame:
    """The synthetic set's images, in the Market-1501 layout under ``<root>/images``."""
    return images.market_layout(Path(root) / "images" / "bounding_box_train")


# name -> (reader, number of standard splits)
VIDEO_SETS = {
    "synthetic": (_synthetic_video, 1),
    "mars": (mars.index, mars.NUM_SPLITS),
    "ilidsvid": (ilidsvid.index, ilidsvid.NUM_SPLITS),
    "prid2011": (prid2011.index, prid2011.NUM_SPLITS),
    "dukev": (dukev.index, dukev.NUM_SPLITS),
}
IMAGE_SETS = {
    "synthetic": _synthetic_images,
    "market1501": images.market1501,
    "dukemtmcreid": images.dukemtmcreid,
    "cuhk03": images.cuhk03,
    "cuhk01": images.cuhk01,
    "viper": images.viper,
    "cuhksysu": images.cuhksysu,
    "3dpes": images.threedpes,
}


def index_video(name: str, root: str | Path, split_id: int = 0) -> pd.DataFrame:
    """One row per tracklet: ``pid``, ``camid``, ``subset`` ("train"/"test"), ``is_query``,
    ``frames`` (image paths sorted by the frame number in their names) for split ``split_id``."""
    return VIDEO_SETS[_known(name, VIDEO_SETS, "video")][0](Path(root), split_id)


def index_images(name: str, root: str | Path) -> pd.DataFrame:
    """One row per training image: ``pid``, ``camid``, ``path``."""
    return IMAGE_SETS[_known(name, IMAGE_SETS, "image")](Path(root))


def num_splits(name: str) -> int:
    """How many standard train/test splits a video set has (results are averaged over them)."""
    return VIDEO_SETS[_known(name, VIDEO_SETS, "video")][1]


def pool_images(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate image tables of several sets, giving every (dataset, pid) its own global id
    0..C-1 (the labels pretraining classifies). Adds ``dataset`` and ``local_pid`` columns."""
    parts = []
    for name, table in tables.items():
        part = table.rename(columns={"pid": "local_pid"})
        part.insert(0, "dataset", name)
        parts.append(part)
    pooled = pd.concat(parts, ignore_index=True)
    keys = pd.MultiIndex.from_frame(pooled[["dataset", "local_pid"]])
    pooled.insert(0, "pid", pd.factorize(keys, sort=True)[0])
    return pooled


def _known(name: str, registry: dict, kind: str) -> str:
    if name not in registry:
        raise DatasetError(f"unknown {kind} dataset {name!r}; known: {', '.join(registry)}")
    return name
