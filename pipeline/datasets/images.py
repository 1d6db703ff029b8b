"""Image re-id sets, used to pretrain the backbone (paper §4.2). One reader per set, each returning
the canonical image table (pid, camid, path) of the images used for training: the training split
where the set defines one, otherwise every image. Junk (-1) and distractor (0) images are left out:
they are not identities.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.datasets.common import image_files, require
from pipeline.errors import DatasetError
from pipeline.files import write_with
from pipeline.tables import image_table

MARKET_PATTERN = re.compile(r"^([-\d]+)_c(\d)")


def market_layout(folder: Path) -> pd.DataFrame:
    """Images named ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg`` in ``folder``: the Market-1501 and
    DukeMTMC-reID convention (pid -1 junk and 0 distractors skipped)."""
    rows = []
    for path in image_files(require(folder, f"the image folder {folder.name}/")):
        match = MARKET_PATTERN.match(path.name)
        if match is None:
            raise DatasetError(f"{path}: expected a name like 0002_c1s1_000451_03.jpg")
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid > 0:
            rows.append({"pid": pid, "camid": cam, "path": path})
    return image_table(rows, folder)


def market1501(root: Path) -> pd.DataFrame:
    """Market-1501 (Zheng et al., ICCV 2015), http://www.liangzheng.org/Project/project_reid.html,
    Market-1501-v15.09.15.zip (md5 65005ab7d12ec1c44de4eeafe813e68a). Training split
    ``Market-1501-v15.09.15/bounding_box_train``: 751 ids, 12,936 images, 6 cameras."""
    return market_layout(Path(root) / "Market-1501-v15.09.15" / "bounding_box_train")


def dukemtmcreid(root: Path) -> pd.DataFrame:
    """DukeMTMC-reID (Zheng et al., ICCV 2017; retracted, no live link). Training split
    ``DukeMTMC-reID/bounding_box_train``: 702 ids, 16,522 images, 8 cameras."""
    return market_layout(Path(root) / "DukeMTMC-reID" / "bounding_box_train")


def cuhk03(root: Path) -> pd.DataFrame:
    """CUHK03 (Li et al., CVPR 2014), ``cuhk03_release/cuhk-03.mat`` (MATLAB v7.3, read with h5py).

    The ``labeled`` and ``detected`` cells hold 5 camera pairs x persons x 10 views; views 1-5 are
    camera a, 6-10 camera b; empty views are skipped. The images live inside the .mat file, so on
    first use they are written as PNG files to ``cuhk03_release/images/`` (kept for later runs).
    Person j of pair p gets pid ``p * 10000 + j``. 1,467 ids, 14,097 images per version.
    """
    mat_path = require(Path(root) / "cuhk03_release" / "cuhk-03.mat", "the CUHK03 file "
                       "cuhk03_release/cuhk-03.mat")
    out = mat_path.parent / "images"
    rows = []
    try:
        with h5py.File(mat_path, "r") as mat:
            for version in ("labeled", "detected"):
                if version not in mat:
                    raise DatasetError(f"{mat_path}: expected the key {version!r}, found "
                                       f"{sorted(mat.keys())}")
                for p, pair_ref in enumerate(mat[version][0]):
                    pair = mat[pair_ref]  # (10 views, persons) of image references
                    for j in range(pair.shape[1]):
                        for view in range(pair.shape[0]):
                            image = np.asarray(mat[pair[view, j]])
                            if image.size == 0 or image.ndim != 3:
                                continue
                            path = out / version / f"{p + 1}_{j + 1:03d}_{view + 1:02d}.png"
                            if not path.exists():
                                _save_png(image.transpose(2, 1, 0), path)
                            rows.append({"pid": (p + 1) * 10000 + j + 1, "camid": view // 5,
                                         "path": path})
    except OSError as err:
        raise DatasetError(f"{mat_path}: not a readable MATLAB v7.3 (HDF5) file ({err})") from err
    return image_table(rows, mat_path)


def cuhk01(root: Path) -> pd.DataFrame:
    """CUHK01 (Li et al., ACCV 2012), ``campus/0001001.png``: pid = the first 4 digits, camera =
    (the next 3 digits - 1) // 2. 971 ids, 3,884 images, 2 cameras."""
    folder = require(Path(root) / "campus", "the CUHK01 folder campus/")
    rows = []
    for path in image_files(folder):
        if not re.fullmatch(r"\d{7}", path.stem):
            raise DatasetError(f"{path}: expected a name of 7 digits like 0001001.png")
        rows.append({"pid": int(path.stem[:4]), "camid": (int(path.stem[4:]) - 1) // 2,
                     "path": path})
    return image_table(rows, folder)


def viper(root: Path) -> pd.DataFrame:
    """VIPeR (Gray et al., PETS 2007), ``VIPeR/{cam_a,cam_b}/*.bmp``: the i-th file (sorted) of each
    camera shows the same person. 632 ids, 1,264 images, 2 cameras."""
    base = Path(root) / "VIPeR"
    cams = [image_files(require(base / cam, f"the VIPeR folder VIPeR/{cam}/"))
            for cam in ("cam_a", "cam_b")]
    if len(cams[0]) != len(cams[1]):
        raise DatasetError(f"{base}: cam_a has {len(cams[0])} images and cam_b {len(cams[1])}; "
                           "expected one per person in each")
    rows = [{"pid": i + 1, "camid": c, "path": path}
            for c, files in enumerate(cams) for i, path in enumerate(files)]
    return image_table(rows, base)


def cuhksysu(root: Path) -> pd.DataFrame:
    """CUHK-SYSU (Xiao et al., CVPR 2017), cropped persons ``cropped_images/p11422_s16929_1.jpg``:
    pid = the number after ``p``; one dummy camera (0). 11,934 ids, 34,574 crops."""
    folder = require(Path(root) / "cropped_images", "the CUHK-SYSU folder cropped_images/")
    rows = []
    for path in image_files(folder):
        match = re.match(r"^p(\d+)_s\d+", path.name)
        if match is None:
            raise DatasetError(f"{path}: expected a name like p11422_s16929_1.jpg")
        rows.append({"pid": int(match.group(1)), "camid": 0, "path": path})
    return image_table(rows, folder)


def threedpes(root: Path) -> pd.DataFrame:
    """3DPeS (Baltieri et al., J-HGBU 2011), ``3DPeS_ReId_Snap.zip`` -> ``RGB/<pid>_<view>...bmp``:
    pid and camera (view) from the name. 192 ids, 1,011 images."""
    folder = require(Path(root) / "RGB", "the 3DPeS folder RGB/")
    rows = []
    for path in image_files(folder):
        match = re.match(r"^(\d+)_(\d+)", path.name)
        if match is None:
            raise DatasetError(f"{path}: expected a name like 001_1_...bmp (<pid>_<view>)")
        rows.append({"pid": int(match.group(1)), "camid": int(match.group(2)), "path": path})
    return image_table(rows, folder)


def _save_png(image: np.ndarray, path: Path) -> None:
    write_with(path, lambda tmp: Image.fromarray(image.astype(np.uint8)).save(tmp, format="PNG"))
