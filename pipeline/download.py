"""Fetching and unpacking dataset archives, safely.

- ``fetch``: HTTP(S) download to ``<dest>.part``, resumed with a Range request when a previous
  attempt was cut, verified against an md5 when one is known, then renamed into place.
- ``extract``: zip and tar (any compression) archives. Every member is checked before anything
  is written: absolute paths, ``..``, links that leave the target, devices, and archives beyond a
  member count or size limit are refused with an error naming the member; nothing is left behind.

Downloaded files are only ever read as archives or images: never executed or imported.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.errors import DownloadError, UnsafeArchiveError
from pipeline.files import CHUNK, md5_file

log = logging.getLogger(__name__)

# Limits against archive bombs. MARS, the largest set, has ~1.2M files and ~7 GB.
MAX_MEMBERS = 3_000_000
MAX_BYTES = 100 * 1024**3


def fetch(url: str, dest: str | Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless it is already there (and matches ``md5``).

    Bytes go to ``<dest>.part``; a later call resumes from its size with an HTTP Range request
    (restarting if the server ignores the range). The ``.part`` file becomes ``dest`` only after the
    md5 (when given) matches; on a mismatch it is deleted and the error gives both checksums.
    """
    dest = Path(dest)
    if dest.exists():
        if md5 is None or md5_file(dest) == md5:
            log.info("%s already present", dest)
            return dest
        raise DownloadError(f"{dest} exists but its md5 is {md5_file(dest)}, expected {md5}: "
                            "delete it (or replace it with the right file) and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    total = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:  # server ignored the range: start again
                offset = 0
            total = response.headers.get("Content-Length")
            total = int(total) + offset if total is not None else None
            mode = "ab" if offset else "wb"
            with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B",
                                               unit_scale=True, desc=dest.name) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the .part already holds every byte
            raise DownloadError(f"downloading {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        if isinstance(err, http.client.IncompleteRead):  # a chunked body cut: keep what came
            with open(part, "ab") as out:
                out.write(err.partial)
        raise DownloadError(f"downloading {url} to {part} failed ({err}); run again to resume "
                            "from the bytes already received") from err
    if total is not None and part.stat().st_size < total:
        raise DownloadError(f"downloading {url}: the connection closed after "
                            f"{part.stat().st_size} of {total} bytes; run again to resume")
    if md5 is not None:
        got = md5_file(part)
        if got != md5:
            part.unlink()
            raise DownloadError(f"{url}: md5 {got} does not match the expected {md5}; the "
                                "download was deleted")
    part.rename(dest)
    return dest


def extract(archive: str | Path, dest: str | Path, max_members: int = MAX_MEMBERS,
            max_bytes: int = MAX_BYTES) -> list[Path]:
    """Unpack a zip or tar archive into ``dest`` and return its top-level entries there.

    All members are checked first; the archive is unpacked into a temporary folder beside
    ``dest`` and its top-level entries are then moved into ``dest`` (replacing entries of the same
    name), so a refused or failed extraction leaves ``dest`` as it was.

    Raises:
        UnsafeArchiveError: naming the first offending member.
        UnsafeArchiveError: ``archive`` is neither a zip nor a tar file, is damaged, or a
            member is refused by tarfile's data filter.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=dest.parent))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    _check_zip(zf, archive, max_members, max_bytes)
                    zf.extractall(tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tf:
                    _check_tar(tf, archive, max_members, max_bytes)
                    tf.extractall(tmp, filter="data")
            else:
                raise UnsafeArchiveError(f"{archive} is neither a zip nor a tar archive")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
            # the data filter's refusals (a link chain leaving the target...), damaged archives
            raise UnsafeArchiveError(f"{archive}: {type(err).__name__}: {err}") from err
        dest.mkdir(exist_ok=True)  # only now: a refused archive must not create it
        entries = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
            entries.append(target)
        return entries
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} leaves the target folder via '..'")


def _check_link(name: str, target: str, archive: Path, hard: bool = False) -> None:
    """A link member must point inside the extraction folder. A symlink's target is relative to
    the member's folder, a (tar) hard link's to the archive root."""
    link_target = PurePosixPath(target.replace("\\", "/"))
    resolved = (PurePosixPath() if hard else PurePosixPath(name).parent) / link_target
    depth = 0
    for part in resolved.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            break
    if link_target.is_absolute() or depth < 0:
        raise UnsafeArchiveError(f"{archive}: member {name!r} links to {target!r}, outside the "
                                 "target folder")


def _check_counts(count: int, size: int, archive: Path, max_members: int, max_bytes: int) -> None:
    if count > max_members:
        raise UnsafeArchiveError(f"{archive}: {count} members, more than the limit of "
                                 f"{max_members}")
    if size > max_bytes:
        raise UnsafeArchiveError(f"{archive}: {size} bytes uncompressed, more than the limit of "
                                 f"{max_bytes}")


def _check_zip(zf: zipfile.ZipFile, archive: Path, max_members: int, max_bytes: int) -> None:
    infos = zf.infolist()
    _check_counts(len(infos), sum(i.file_size for i in infos), archive, max_members, max_bytes)
    for info in infos:
        _check_name(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            _check_link(info.filename, zf.read(info).decode("utf-8", "replace"), archive)


def _check_tar(tf: tarfile.TarFile, archive: Path, max_members: int, max_bytes: int) -> None:
    members = tf.getmembers()
    _check_counts(len(members), sum(m.size for m in members), archive, max_members, max_bytes)
    for member in members:
        _check_name(member.name, archive)
        if member.issym():
            _check_link(member.name, member.linkname, archive)
        elif member.islnk():
            _check_link(member.name, member.linkname, archive, hard=True)
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or fifo")
