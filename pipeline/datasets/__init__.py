"""Dataset readers: every video and image re-id set rewritten into one canonical table.

``index_video(name, root, split_id)`` and ``index_images(name, root)`` dispatch on the dataset name
(the names ``params.yaml`` accepts under ``data.video`` and ``data.image``); everything downstream
reads only the canonical tables (``pipeline.tables``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.datasets import dukev, ilidsvid, images, mars, prid2011, synthetic
from pipeline.errors import DatasetError
from pipeline.params import VIDEO_SPLITS

__all__ = ["index_images", "index_video", "num_splits"]


def _synthetic_video(root: Path, split_id: int = 0) -> pd.DataFrame:
    """The synthetic set's video part, in the MARS layout under ``<root>/video``, with each
    frame's label map (``<root>/video/labels/bbox_<subset>/<pid>/<frame>.png``; see
    ``pipeline.datasets.synthetic``). A set generated before label maps existed (no
    ``video/labels``) gets none; one whose label map of a frame is missing is an error."""
    video = Path(root) / "video"
    table = mars.index(video, split_id)
    if not (video / "labels").is_dir():
        return table
    labels = []
    for frames in table["frames"]:
        maps = [synthetic.label_path(f, root) for f in frames]
        missing = next((m for m in maps if not os.path.isfile(m)), None)
        if missing is not None:
            raise DatasetError(f"{video}: the label map {missing} of a frame is missing "
                               "(regenerate the set: `dvc repro --force download`)")
        labels.append(maps)
    return table.assign(labels=labels)


def _synthetic_images(root: Path) -> pd.DataFrame:
    """The synthetic set's images, in the Market-1501 layout under ``<root>/images``."""
    return images.market_layout(Path(root) / "images" / "bounding_box_train")


# name -> reader (the names and split counts of pipeline.params.VIDEO_SPLITS)
VIDEO_SETS = {
    "synthetic": _synthetic_video,
    "synthetic2": _synthetic_video,  # the second generated set, in the same layout
    "mars": mars.index,
    "ilidsvid": ilidsvid.index,
    "prid2011": prid2011.index,
    "dukev": dukev.index,
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
    return VIDEO_SETS[_known(name, VIDEO_SETS, "video")](Path(root), split_id)


def index_images(name: str, root: str | Path) -> pd.DataFrame:
    """One row per training image: ``pid``, ``camid``, ``path``."""
    return IMAGE_SETS[_known(name, IMAGE_SETS, "image")](Path(root))


def num_splits(name: str) -> int:
    """How many standard train/test splits a video set has (results are averaged over them)."""
    return VIDEO_SPLITS[_known(name, VIDEO_SETS, "video")]


def _known(name: str, registry: dict, kind: str) -> str:
    if name not in registry:
        raise DatasetError(f"unknown {kind} dataset {name!r}; known: {', '.join(registry)}")
    return name
