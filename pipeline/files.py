"""File helpers, the one place for them: atomic writes, checksums, terminal tables, and the
check that a stage can write its outputs (``check_writable``) before it computes them.

Every output of the pipeline is written through ``atomic_path``: to a temporary file beside its
destination, renamed over it only once complete, so that an interrupted or failed write never
leaves a half-written output (the previous file, if any, stays as it was).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

CHUNK = 1 << 20
MIN_FREE = 1 << 16  # a folder with less free space than this counts as full (a few blocks)

# The OSError numbers that mean the disk is full or the place is not writable: a stage reports
# them in one line naming the file (``stages.common.run``), never as a traceback.
DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def disk_error_text(err: OSError) -> str:
    """Why a file could not be written (or read) and what to do: ``DISK_ERRORS``' words."""
    reason = DISK_ERRORS.get(err.errno) or (err.strerror or str(err)).lower()
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}: free some space, then run the stage again"
    if err.errno in (errno.EACCES, errno.EPERM):  # a read as well as a write
        return (f"{reason}: check the permissions of the file and its folder, then run the stage "
                "again")
    return f"{reason}: make it writable or point the output elsewhere, then run the stage again"


def check_writable(*folders: str | Path) -> None:
    """Fail before any computation when a stage could not write its outputs: each folder (or,
    when it does not exist yet, the nearest existing folder above it, where it will be created)
    must accept a new file and have at least ``MIN_FREE`` bytes free. Writes nothing that stays.

    Raises:
        InputError: naming the folder and the reason (read-only, permission denied, full).
    """
    for folder in map(Path, folders):
        existing = nearest_folder(folder)
        where = f"{folder}" if existing == folder else f"{folder} (to be created in {existing})"
        try:
            with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
                pass
        except OSError as err:
            raise InputError(f"{where}: cannot write there, {disk_error_text(err)}") from err
        if shutil.disk_usage(existing).free < MIN_FREE:
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise InputError(f"{where}: cannot write there, {disk_error_text(full)}")


def nearest_folder(path: str | Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does (where it would be
    created)."""
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())


def check_room(path: str | Path, needed: int, what: str, remedy: str = "",
               error: type[InputError] = InputError) -> int:
    """Fail before a computation whose result, ``needed`` bytes, could not be written to
    ``path`` (or the folder it will be created in) for lack of free space: the one disk check
    of the pipeline. ``remedy``: ways out beside freeing space. Returns the bytes free.

    Raises:
        error: naming ``path``, ``what`` it is, the bytes needed and the bytes free.
    """
    folder = nearest_folder(Path(path).parent)  # the folder may not exist yet
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise error(f"{path}: {what} needs about {size(needed)} but {folder} has {size(free)} "
                    f"free, no space left on device: free some space{remedy}, then run the stage "
                    "again")
    return free


def size(num_bytes: int) -> str:
    """Bytes as people read a disk: GB with two decimals from 1 GB on, else whole MB."""
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.0f} MB"


def temporary_path(path: str | Path) -> Path:
    """Where ``atomic_path`` writes ``path`` before renaming it: ``.<name>.tmp`` beside it (one
    fixed name, so that the leftover of a killed writer is replaced, never accumulated)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed to ``path`` when the block ends
    normally, removed when it raises (the block's error is the one that propagates). A full disk
    or a refused write that names no file (a write to an open file) is raised naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in DISK_ERRORS or err.filename is not None:
            raise
        raise OSError(err.errno, DISK_ERRORS[err.errno], str(path)) from err
    finally:
        with contextlib.suppress(OSError):  # never hide the real error behind a cleanup error
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to build its content in; when the block ends normally
    it replaces ``path`` (the old folder removed), when it raises it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """``writer(temporary path)``, then rename: for writers that take a path (torch.save)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (indented unless ``indent`` is None), atomically."""
    write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Rows of equal keys as CSV (DVC plots read it), atomically."""
    import pandas as pd  # only the writers of tables pay for pandas

    write_text(path, pd.DataFrame(list(rows)).to_csv(index=False))


def _digest(path: str | Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    return _digest(path, "sha256")


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file (the checksum dataset pages publish), read in 1 MiB blocks."""
    return _digest(path, "md5")


def tree_fingerprint(root: str | Path) -> dict:
    """Number of files, total bytes and a hash of every relative path, size and modification
    time under ``root`` (symlinks followed): cheap (no file is read, as DVC's own state) and
    changes whenever a file is added, removed, resized or written (a frame changed in place at
    the same size too; copying the tree without keeping the times counts as a change)."""
    root = Path(root)
    digest = hashlib.sha256()
    files = size = 0
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                          .encode())
            files, size = files + 1, size + stat.st_size
    return {"files": files, "bytes": size, "sha256": digest.hexdigest()}


def content_fingerprint(paths: Sequence[str | Path], root: str | Path,
                        known: dict[str, str] | None = None) -> dict:
    """Number of files and a sha256 over each file's path relative to ``root`` and the md5 of its
    bytes, in the order given: what a stage that reads these files reads. Unlike
    ``tree_fingerprint`` it reads every byte, so it is the same for the same content whatever the
    files' times (a set generated again, a tree copied), and changes when a file is written over
    at the same size and time. ``known`` keeps each file's md5 across calls (the splits of one set
    share their frames: each file is read once); files are read on a few threads, since for small
    frames the time goes to opening them."""
    from concurrent.futures import ThreadPoolExecutor  # only the index stage hashes contents

    known = {} if known is None else known
    todo = list(dict.fromkeys(str(p) for p in paths if str(p) not in known))
    with ThreadPoolExecutor(max_workers=8) as pool:
        known.update(zip(todo, pool.map(md5_file, todo, chunksize=64), strict=True))
    digest = hashlib.sha256()
    for path in map(str, paths):
        digest.update(f"{Path(path).relative_to(root).as_posix()}\0{known[path]}\n".encode())
    return {"files": len(paths), "sha256": digest.hexdigest()}
