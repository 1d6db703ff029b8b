"""Shared pieces of the dataset readers and the index stage: layout checks, frame order, frame
screening and the invariants the protocols rely on. (The canonical tables the readers return are
``pipeline.tables``.)"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class MissingPathError(DatasetError):
    """A file or folder of a set's layout that is not where the reader looks (``path``)."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else a MissingPathError naming it and what it should be."""
    if not path.exists():
        raise MissingPathError(f"expected {what} at {path}, which does not exist", path)
    return path


def find_misplaced(root: Path, expected: Path,
                   max_entries: int = 100_000) -> tuple[Path, int] | None:
    """Where under ``root`` a file or folder that the layout wants at ``expected`` (under
    ``root``) lies instead: a tree extracted one level too deep or without the archive's top
    folder. Looks for the longest tail of ``expected``'s path below ``root`` first (a whole
    ``prid_2011/multi_shot`` one level down before a bare ``multi_shot``), up to two levels
    deeper than ``expected``, shallowest first, reading at most ``max_entries`` entries.

    Returns:
        (the path found, how many trailing parts of ``expected`` it matches), or None."""
    try:
        wanted = expected.relative_to(root).parts
    except ValueError:
        return None
    found, level, seen = [], [root], 0
    for _ in range(len(wanted) + 2):
        below = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            seen += len(entries)
            found += [Path(e.path) for e in entries]
            below += [Path(e.path) for e in entries if e.is_dir()]
            if seen > max_entries:
                break
        if seen > max_entries:
            break
        level = below
    for tail in range(len(wanted), 0, -1):
        hits = [p for p in found if p.relative_to(root).parts[-tail:] == wanted[-tail:]
                and p != expected]
        if hits:
            return min(hits, key=lambda p: len(p.parts)), tail
    return None


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
    a warning; a video table's ``labels`` (label maps, where a tracklet has them) lose the maps
    of the frames left out, so they stay parallel to the frames. ``checked`` keeps the verdicts
    across calls (the splits of one dataset share their frames: each file is opened once).
    Returns (the table, {"frames": skipped, "tracklets": dropped})."""
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
    keep = table[column].map(lambda paths: [str(p) not in bad for p in paths])
    kept = {column: [[p for p, k in zip(paths, mask, strict=True) if k]
                     for paths, mask in zip(table[column], keep, strict=True)]}
    if "labels" in table.columns:  # a bad frame's label map goes with it: they stay parallel
        kept["labels"] = [[p for p, k in zip(maps, mask, strict=True) if k] if len(maps) else maps
                          for maps, mask in zip(table["labels"], keep, strict=True)]
    table = table.assign(**kept)
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
