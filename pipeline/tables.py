"""The canonical tables: what every stage after ``index`` reads, whatever the dataset.

Every dataset reader (``pipeline.datasets``) rewrites its set into one of two tables, and the index
stage stores them as JSON files; nothing downstream knows a dataset's layout:

- video: one row per tracklet, columns ``pid`` (int; -1 junk and 0 distractors kept where the set
  has them), ``camid`` (int, the camera number of the set's own naming), ``subset`` ("train" or
  "test"), ``is_query`` (bool), ``frames`` (list of image paths in temporal order), ``labels``
  (list of label map paths parallel to ``frames``, or an empty list: only the synthetic set has
  them; see ``LABELS``).
- image: one row per image, columns ``pid``, ``camid``, ``path``.

This module imports no reader, so that a change to a reader re-runs only the stages that read raw
data (download and index), never the training stages that read these tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.errors import DatasetError
from pipeline.files import write_json

VIDEO_COLUMNS = ["pid", "camid", "subset", "is_query", "frames", "labels"]
IMAGE_COLUMNS = ["pid", "camid", "path"]

# The values of a label map (the files of the ``labels`` column), pixel by pixel: index = label.
# A label map is a 2-channel PNG (mode "LA") the size of its frame: channel L the visible labels,
# channel A the labels the frame would have without its occluder. hair: hair or hat; skin: face,
# hands, legs below shorts; arms: the sleeves; legs: trousers or shorts.
LABELS = ("background", "hair", "skin", "torso", "arms", "legs", "shoes", "bag", "occluder")


def video_table(rows: list[dict], source: Path) -> pd.DataFrame:
    """The canonical video table from reader rows, with dtypes fixed and basic invariants checked:
    no empty tracklet, queries only among test tracklets, label maps (where a row has them) one
    per frame. A row without ``labels`` gets an empty list."""
    rows = [{**r, "labels": [] if r.get("labels") is None else list(r["labels"])} for r in rows]
    table = pd.DataFrame(rows, columns=VIDEO_COLUMNS)
    table = table.astype({"pid": "int64", "camid": "int64", "subset": "object", "is_query": "bool"})
    empty = table[table["frames"].map(len) == 0]
    if len(empty):
        raise DatasetError(f"{source}: tracklet of pid {empty.iloc[0]['pid']} camera "
                           f"{empty.iloc[0]['camid']} has no frames")
    num_labels = table["labels"].map(len)
    unmatched = table[(num_labels > 0) & (num_labels != table["frames"].map(len))]
    if len(unmatched):
        row = unmatched.iloc[0]
        raise DatasetError(f"{source}: tracklet of pid {row['pid']} camera {row['camid']} has "
                           f"{len(row['frames'])} frames but {len(row['labels'])} label maps")
    if (table["is_query"] & (table["subset"] != "test")).any():
        raise DatasetError(f"{source}: a query tracklet is not in the test subset")
    return table.reset_index(drop=True)


def image_table(rows: list[dict], source: Path) -> pd.DataFrame:
    """The canonical image table (pid, camid, path); an empty one is an error."""
    if not rows:
        raise DatasetError(f"{source}: no images found")
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    return table.astype({"pid": "int64", "camid": "int64"}).reset_index(drop=True)


def pool_sets(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the tables of several sets (image tables for pretraining; the training
    tracklets of several video sets for a schedule across sets), giving every (dataset, pid) its
    own global id 0..C-1, the labels a loss classifies: two sets' people are different people
    even where their pids are the same numbers. Adds ``dataset`` and ``local_pid`` columns."""
    parts = []
    for name, table in tables.items():
        part = table.rename(columns={"pid": "local_pid"})
        part.insert(0, "dataset", name)
        parts.append(part)
    pooled = pd.concat(parts, ignore_index=True)
    keys = pd.MultiIndex.from_frame(pooled[["dataset", "local_pid"]])
    pooled.insert(0, "pid", pd.factorize(keys, sort=True)[0])
    return pooled


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
# Each file also records what it indexes (``INDEX_META``): the set, the split, and the fingerprint
# of the content of every frame and label map it lists (``files.content_fingerprint``). Every stage
# that reads frames depends on its index file in dvc.yaml, so frames changed on disk (another
# ``synthetic`` setting, a real set's frames replaced at the same paths) change the index and
# re-run every stage that reads them, never only the index stage.

INDEX_META = ("dataset", "split", "content")


def _relative_records(paths, root: Path, source: Path) -> list[str]:
    try:
        return [str(Path(f).relative_to(root)) for f in paths]
    except ValueError as err:
        raise DatasetError(f"{source}: a path is not under the dataset root {root}: {err}") from err


def save_video_index(table: pd.DataFrame, root: Path, path: Path,
                     recorded_root: Path | None = None, meta: dict | None = None) -> None:
    """Write a video table as JSON: ``{"root": ..., **meta, "tracklets": [{pid, camid, subset,
    is_query, frames: [relative paths], labels: [relative paths]}, ...]}``, ``labels`` only in
    tracklets that have label maps (a table without the column has none). Frames and label maps
    are relative to ``root``; the file records ``recorded_root`` (default ``root``) as the place
    to find them. ``meta``: what the index stage records of the split (its dataset, split and the
    fingerprint of the frames' content, ``INDEX_META``), read back as the table's ``attrs``."""
    root = Path(root)
    has_labels = "labels" in table.columns
    records = []
    for r in table.itertuples(index=False):
        record = {"pid": int(r.pid), "camid": int(r.camid), "subset": r.subset,
                  "is_query": bool(r.is_query), "frames": _relative_records(r.frames, root, path)}
        if has_labels and len(r.labels):
            record["labels"] = _relative_records(r.labels, root, path)
        records.append(record)
    write_json(path, indent=None,
               obj={"root": str(recorded_root or root), **(meta or {}), "tracklets": records})


def _recorded_root(content: dict, path: Path) -> Path:
    """The dataset root an index file names, resolved (see ``resolve_data_path``); a root that
    is gone is an error saying how to bring it back."""
    root = resolve_data_path(content["root"])
    if not root.is_dir():
        raise DatasetError(f"{path}: the dataset root {content['root']} it indexes does not exist "
                           "(deleted, or a fresh clone whose data/download.json came from a DVC "
                           "remote): run `dvc repro --force download` to prepare it again")
    return root


def _read_index(path: Path, items: str, fields: tuple[str, ...],
                ) -> tuple[Path, list[dict], dict]:
    """An index file's root, its records, each checked to have ``fields``, and what it records
    of itself (``INDEX_META``); a malformed file is a DatasetError naming it and the expected
    shape."""
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
    meta = {key: content[key] for key in INDEX_META if key in content}
    return _recorded_root(content, Path(path)), records, meta


def _under(root: Path, relative: str, path: Path) -> Path:
    """``root / relative`` for a path from an index file, refused if it leaves the root (an
    absolute path, a ``..``): the index names files of its dataset and nothing else."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise DatasetError(f"{path}: the entry {relative!r} leaves the dataset root {root} "
                           "(expected a path relative to it)")
    return root / relative


def load_video_index(path: Path) -> pd.DataFrame:
    """Read a table written by ``save_video_index``; frames and label maps become paths under its
    root again (a tracklet without ``labels``, as in every index of a real set: an empty list)."""
    root, records, meta = _read_index(path, "tracklets",
                                      ("pid", "camid", "subset", "is_query", "frames"))
    rows = []
    for r in records:
        labels = r.get("labels", [])
        if not isinstance(labels, list):
            raise DatasetError(f"{path}: a tracklet's labels are {labels!r}, expected a list of "
                               "paths relative to the dataset root")
        rows.append({**r, "frames": [_under(root, f, path) for f in r["frames"]],
                     "labels": [_under(root, f, path) for f in labels]})
    table = video_table(rows, Path(path))
    table.attrs.update(meta)
    return table


def save_image_index(table: pd.DataFrame, root: Path, path: Path,
                     recorded_root: Path | None = None, meta: dict | None = None) -> None:
    """Write an image table as JSON: ``{"root": ..., **meta, "images": [{pid, camid, path},
    ...]}`` (``meta`` as in ``save_video_index``)."""
    root = Path(root)
    records = [{"pid": int(r.pid), "camid": int(r.camid), "path": rel}
               for r, rel in zip(table.itertuples(index=False),
                                 _relative_records(table["path"], root, path), strict=True)]
    write_json(path, indent=None,
               obj={"root": str(recorded_root or root), **(meta or {}), "images": records})


def load_image_index(path: Path) -> pd.DataFrame:
    root, records, meta = _read_index(path, "images", ("pid", "camid", "path"))
    table = image_table([{**r, "path": _under(root, r["path"], path)} for r in records],
                        Path(path))
    table.attrs.update(meta)
    return table
