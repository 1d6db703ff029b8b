"""Shared pieces of the dataset readers: the canonical tables and the layout checks.

Every reader returns one of two canonical tables, so nothing downstream knows a dataset's layout:

- video: one row per tracklet, columns ``pid`` (int; -1 junk and 0 distractors kept where the set
  has them), ``camid`` (int, the camera number of the set's own naming), ``subset`` ("train" or
  "test"), ``is_query`` (bool), ``frames`` (list of absolute image paths in temporal order).
- image: one row per image, columns ``pid``, ``camid``, ``path``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.params import InputError

log = logging.getLogger(__name__)

VIDEO_COLUMNS = ["pid", "camid", "subset", "is_query", "frames"]
IMAGE_COLUMNS = ["pid", "camid", "path"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(InputError):
    """Data that does not match the layout or the protocol a reader expects."""


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a DatasetError naming it and what it should be."""
    if not path.exists():
        raise DatasetError(f"expected {what} at {path}, which does not exist")
    return path


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def by_frame_number(paths: Iterable[Path], pattern: str) -> list[Path]:
    """``paths`` sorted by the frame number that ``pattern``'s first group captures from each file
    name, never by listing order. A name the pattern does not match is a DatasetError."""
    regex = re.compile(pattern)
    keyed = []
    for path in paths:
        match = regex.search(path.name)
        if match is None:
            raise DatasetError(f"{path}: cannot parse a frame number from the file name "
                               f"(expected a name matching {pattern!r})")
        keyed.append((int(match.group(1)), path.name, path))
    return [path for *_, path in sorted(keyed)]


def video_table(rows: list[dict], source: Path) -> pd.DataFrame:
    """The canonical video table from reader rows, with dtypes fixed and basic invariants checked:
    no empty tracklet, queries only among test tracklets."""
    table = pd.DataFrame(rows, columns=VIDEO_COLUMNS)
    table = table.astype({"pid": "int64", "camid": "int64", "subset": "object", "is_query": "bool"})
    empty = table[table["frames"].map(len) == 0]
    if len(empty):
        raise DatasetError(f"{source}: tracklet of pid {empty.iloc[0]['pid']} camera "
                           f"{empty.iloc[0]['camid']} has no frames")
    if (table["is_query"] & (table["subset"] != "test")).any():
        raise DatasetError(f"{source}: a query tracklet is not in the test subset")
    return table.reset_index(drop=True)


def image_table(rows: list[dict], source: Path) -> pd.DataFrame:
    """The canonical image table (pid, camid, path); an empty one is an error."""
    if not rows:
        raise DatasetError(f"{source}: no images found")
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    return table.astype({"pid": "int64", "camid": "int64"}).reset_index(drop=True)


# --- where the extracted datasets live ------------------------------------------------------------
# The extracted datasets (``data/raw``, or a symlink from there to a shared disk) and the user's
# archives (``data/archives``) are not DVC outputs: a million frames would slow every
# ``dvc status`` and be copied into every experiment. ``dvc exp run --temp`` and queued experiments
# run in a copy of the project under ``<project>/.dvc/tmp/exps/``, which holds only git files and
# DVC outputs; there a relative data path that the copy lacks is read from the project itself.

EXPERIMENT_DIR = (".dvc", "tmp", "exps")


def experiment_origin(cwd: Path | None = None) -> Path | None:
    """The project a DVC experiment workspace was copied from, or None outside of one."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    parts = cwd.resolve().parts
    n = len(EXPERIMENT_DIR)
    for i in range(len(parts) - n, 0, -1):
        if parts[i:i + n] == EXPERIMENT_DIR:
            return Path(*parts[:i])
    return None


def resolve_data_path(path: Path | str, cwd: Path | None = None) -> Path:
    """``path`` itself when it is absolute or exists; inside a DVC experiment workspace, a relative
    path the workspace lacks is taken from the project the experiment was copied from."""
    path = Path(path)
    if path.is_absolute() or path.exists() or (cwd is not None and (cwd / path).exists()):
        return path
    origin = experiment_origin(cwd)
    if origin is not None and (origin / path).exists():
        return origin / path
    return path


# --- the canonical tables on disk -----------------------------------------------------------------
# Frame and image paths are stored relative to the dataset root, which is recorded once per file,
# so an index stays valid when the repository moves (and is the same in experiment workspaces).


def _relative_records(paths, root: Path, source: Path) -> list[str]:
    try:
        return [str(Path(f).relative_to(root)) for f in paths]
    except ValueError as err:
        raise DatasetError(f"{source}: a path is not under the dataset root {root}: {err}") from err


def save_video_index(table: pd.DataFrame, root: Path, path: Path,
                     recorded_root: Path | None = None) -> None:
    """Write a video table as JSON: ``{"root": ..., "tracklets": [{pid, camid, subset,
    is_query, frames: [relative paths]}, ...]}``. Frames are relative to ``root``; the file
    records ``recorded_root`` (default ``root``) as the place to find them."""
    root = Path(root)
    records = [{"pid": int(r.pid), "camid": int(r.camid), "subset": r.subset,
                "is_query": bool(r.is_query), "frames": _relative_records(r.frames, root, path)}
               for r in table.itertuples(index=False)]
    _write_json(path, {"root": str(recorded_root or root), "tracklets": records})


def _recorded_root(content: dict, path: Path) -> Path:
    """The dataset root an index file names, resolved (see ``resolve_data_path``); a root that
    is gone is an error saying how to bring it back."""
    root = resolve_data_path(content["root"])
    if not root.is_dir():
        raise DatasetError(f"{path}: the dataset root {content['root']} it indexes does not exist "
                           "(deleted, or a fresh clone whose data/download.json came from a DVC "
                           "remote): run `dvc repro --force download` to prepare it again")
    return root


def _read_index(path: Path, items: str, fields: tuple[str, ...]) -> tuple[Path, list[dict]]:
    """An index file's root and its records, each checked to have ``fields``; a malformed file
    is a DatasetError naming it and the expected shape."""
    expected = (f'expected an index written by the index stage: {{"root": ..., "{items}": '
                f"[{{{', '.join(fields)}, ...}}, ...]}}")
    try:
        content = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not JSON ({err}); {expected}") from err
    records = content.get(items) if isinstance(content, dict) else None
    if (not isinstance(records, list) or "root" not in content
            or not all(isinstance(r, dict) and set(fields) <= set(r) for r in records)):
        raise DatasetError(f"{path}: {expected}")
    return _recorded_root(content, Path(path)), records


def _under(root: Path, relative: str, path: Path) -> Path:
    """``root / relative`` for a path from an index file, refused if it leaves the root (an
    absolute path, a ``..``): the index names files of its dataset and nothing else."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise DatasetError(f"{path}: the entry {relative!r} leaves the dataset root {root} "
                           "(expected a path relative to it)")
    return root / relative


def load_video_index(path: Path) -> pd.DataFrame:
    """Read a table written by ``save_video_index``; frames become paths under its root again."""
    root, records = _read_index(path, "tracklets",
                                ("pid", "camid", "subset", "is_query", "frames"))
    rows = [{**r, "frames": [_under(root, f, path) for f in r["frames"]]} for r in records]
    return video_table(rows, Path(path))


def save_image_index(table: pd.DataFrame, root: Path, path: Path,
                     recorded_root: Path | None = None) -> None:
    """Write an image table as JSON: ``{"root": ..., "images": [{pid, camid, path}, ...]}``."""
    root = Path(root)
    records = [{"pid": int(r.pid), "camid": int(r.camid), "path": rel}
               for r, rel in zip(table.itertuples(index=False),
                                 _relative_records(table["path"], root, path), strict=True)]
    _write_json(path, {"root": str(recorded_root or root), "images": records})


def load_image_index(path: Path) -> pd.DataFrame:
    root, records = _read_index(path, "images", ("pid", "camid", "path"))
    return image_table([{**r, "path": _under(root, r["path"], path)} for r in records],
                       Path(path))


def _write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# --- invariants the protocols rely on -------------------------------------------------------------


def frame_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a frame (missing, empty, not an image by its header), or None.
    Reads the file's header only: a frame damaged further in fails when it is read."""
    try:
        if os.path.getsize(path) == 0:
            return "is empty (0 bytes)"
        with Image.open(path):
            return None
    except FileNotFoundError:
        return "does not exist"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        return f"is not a readable image ({err})"


def screen_frames(table: pd.DataFrame, policy: str, source: str, column: str = "frames",
                  checked: dict[str, str | None] | None = None,
                  ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Check every frame (``column``: "frames" of a video table, "path" of an image table) with
    ``frame_problem``. ``policy`` (``data.bad_frames``) "fail": any bad frame is a DatasetError
    naming it and the count; "skip": bad frames are left out (tracklets left with none, too), with
    a warning. ``checked`` keeps the verdicts across calls (the splits of one dataset share their
    frames: each file is opened once). Returns (the table, {"frames": skipped, "tracklets":
    dropped})."""
    video = column == "frames"
    checked = {} if checked is None else checked
    bad = {}
    for paths in (table[column] if video else table[column].map(lambda p: [p])):
        for path in map(str, paths):
            if path not in checked:
                checked[path] = frame_problem(path)
            if checked[path] is not None:
                bad[path] = checked[path]
    counts = {"frames": len(bad), "tracklets": 0}
    if not bad:
        return table, counts
    first, problem = next(iter(bad.items()))
    if policy == "fail":
        raise DatasetError(f"{source}: {len(bad)} frame(s) listed in the index cannot be used, "
                           f"e.g. frame {first} {problem} (set data.bad_frames: skip to leave "
                           "them out)")
    log.warning("%s: leaving out %d bad frame(s), e.g. %s %s", source, len(bad), first, problem)
    if not video:
        return table[~table[column].map(str).isin(bad)].reset_index(drop=True), counts
    kept = table[column].map(lambda paths: [p for p in paths if str(p) not in bad])
    table = table.assign(**{column: kept})
    empty = table[column].map(len) == 0
    counts["tracklets"] = int(empty.sum())
    return table[~empty].reset_index(drop=True), counts


def check_video_invariants(table: pd.DataFrame, source: str) -> None:
    """Train and test identities are disjoint (junk -1 and distractors 0 aside), every query has a
    test tracklet of its identity in another camera, and every frame file exists."""
    people = table[table["pid"] > 0]
    overlap = set(people.loc[people["subset"] == "train", "pid"]) & set(
        people.loc[people["subset"] == "test", "pid"])
    if overlap:
        raise DatasetError(f"{source}: train and test share identities {sorted(overlap)[:10]}")
    test = table[table["subset"] == "test"]
    cams = test.groupby("pid")["camid"].agg(set)
    for row in test[test["is_query"]].itertuples():
        if not cams.get(row.pid, set()) - {row.camid}:
            raise DatasetError(f"{source}: query pid {row.pid} (camera {row.camid}) has no test "
                               "tracklet in another camera, so it can never be matched")
    for frames in table["frames"]:
        for frame in frames:
            if not os.path.isfile(frame):
                raise DatasetError(f"{source}: frame {frame} listed in the index does not exist")
