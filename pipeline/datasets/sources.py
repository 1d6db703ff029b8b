"""Where each real dataset comes from and how its files are laid out before extraction.

The ``download`` stage prepares ``data/raw/<name>/`` for every dataset named in ``params.yaml``, by
the first of these that applies:

1. ``data/raw/<name>/`` holds an extracted tree (or is a symlink to one): used as is when it
   reads; when it does not, the reader's error is the stage's error (with where a misplaced folder
   was found), and nothing is extracted or downloaded over it.
2. ``data/raw/<name>/`` is absent or empty (or holds only the files ``placed`` there by hand,
   such as MARS's ``info/``), and ``data/archives/<name>/`` holds the archives listed below (put
   there by you): checked against their md5 where one is known, then extracted.
3. The set has a public URL: the archive is downloaded to ``data/archives/<name>/`` (resumable),
   verified, then extracted.

Otherwise the stage stops with the instructions of that set: where to obtain it and where to put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    name: str  # file name expected in data/archives/<dataset>/
    md5: str | None = None  # None: no published checksum
    url: str | None = None  # None: no stable public link


@dataclass(frozen=True)
class Source:
    archives: tuple[Archive, ...]
    obtain: str  # where to get the files, for the error message
    extra: str = ""  # files to place besides the archives
    # what ``extra`` puts in data/raw/<name>/ by hand: alone there, they are not an extracted tree
    placed: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "mars": Source(
        archives=(Archive("bbox_train.zip", "f4a3c5967a1b440ccf770f388c609602"),
                  Archive("bbox_test.zip", "950d3bfbd792103d12729ac4f57199cf")),
        obtain="the MARS project page http://www.liangzheng.com.cn/Project/project_mars.html",
        extra="Also copy the folder info/ of the MARS-evaluation repository "
              "(tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat, train_name.txt, "
              "test_name.txt) to {raw}/mars/info/.",
        placed=("info",),
    ),
    "ilidsvid": Source(
        archives=(Archive("iLIDS-VID.tar", "7752bd15b611558701bb0e2380ed8950",
                          "http://www.eecs.qmul.ac.uk/~xiatian/iLIDS-VID/iLIDS-VID.tar"),),
        obtain="http://www.eecs.qmul.ac.uk/~xiatian/downloads_qmul_iLIDS-VID_ReID_dataset.html",
    ),
    "prid2011": Source(
        archives=(Archive("prid_2011.zip"),),
        obtain="https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/PRID11/",
        extra="Optionally put splits_prid2011.json (the usual 10 splits) in {raw}/prid2011/; "
              "without it, 10 seeded 89/89 splits are drawn.",
        placed=("splits_prid2011.json",),
    ),
    "dukev": Source(
        archives=(Archive("DukeMTMC-VideoReID.zip"),),
        obtain="a copy you are entitled to (DukeMTMC was retracted; there is no live link)",
    ),
    "market1501": Source(
        archives=(Archive("Market-1501-v15.09.15.zip", "65005ab7d12ec1c44de4eeafe813e68a"),),
        obtain="the Market-1501 project page http://www.liangzheng.org/Project/project_reid.html",
    ),
    "dukemtmcreid": Source(
        archives=(Archive("DukeMTMC-reID.zip"),),
        obtain="a copy you are entitled to (DukeMTMC was retracted; there is no live link)",
    ),
    "cuhk03": Source(
        archives=(Archive("cuhk03_release.zip"),),
        obtain="the CUHK03 page http://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html",
    ),
    "cuhk01": Source(
        archives=(Archive("CUHK01.zip"),),
        obtain="the CUHK01 page http://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html",
    ),
    "viper": Source(
        archives=(Archive("VIPeR.v1.0.zip"),),
        obtain="the VIPeR page https://vision.soe.ucsc.edu/node/178",
    ),
    "cuhksysu": Source(
        archives=(Archive("cuhksysu.zip"),),
        obtain="the CUHK-SYSU page http://www.ee.cuhk.edu.hk/~xgwang/PS/dataset.html "
               "(the zip must hold cropped_images/p<pid>_s<scene>_<n>.jpg person crops)",
    ),
    "3dpes": Source(
        archives=(Archive("3DPeS_ReId_Snap.zip"),),
        obtain="the 3DPeS page http://www.openvisor.org/3dpes.asp",
    ),
}


def instructions(name: str, raw: str, archives: str) -> str:
    """What to do when dataset ``name`` is nowhere to be found."""
    source = SOURCES[name]
    files = ", ".join(a.name for a in source.archives)
    text = (f"dataset {name!r} is not available: get {files} from {source.obtain} and put "
            f"{'them' if len(source.archives) > 1 else 'it'} in {archives}/{name}/, or put the "
            f"already extracted dataset (or a symlink to it) at {raw}/{name}/.")
    return f"{text} {source.extra.format(raw=raw)}".strip()


def holds_a_tree(root: Path, source: Source) -> bool:
    """Whether ``root`` holds anything besides what the user places there by hand next to the
    archives (``source.placed``): then it is an extracted tree, to be used or fixed, never
    extracted or downloaded over."""
    return root.is_dir() and any(e.name not in source.placed for e in root.iterdir())


def unavailable(name: str, raw: Path, archives: Path) -> str | None:
    """The download stage's instructions when real set ``name`` has nothing to prepare it from:
    no extracted tree in ``raw/<name>`` (nor a symlink, even a broken one: the download stage
    names that), an archive missing from ``archives/<name>`` with no public URL to fetch it
    from. None when the download stage can go on (whether the tree reads is its business)."""
    source, root = SOURCES[name], raw / name
    if root.is_symlink() or holds_a_tree(root, source):
        return None
    if all(a.url is not None or (archives / name / a.name).exists() for a in source.archives):
        return None
    return instructions(name, str(raw), str(archives))
