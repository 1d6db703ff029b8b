"""File helpers, the one place for them: atomic writes, checksums, terminal tables.

Every output of the pipeline is written through ``atomic_path``: to a temporary file beside its
destination, renamed over it only once complete, so that an interrupted or failed write never
leaves a half-written output (the previous file, if any, stays as it was).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def temporary_path(path: str | Path) -> Path:
    """Where ``atomic_path`` writes ``path`` before renaming it: ``.<name>.tmp`` beside it (one
    fixed name, so that the leftover of a killed writer is replaced, never accumulated)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed to ``path`` when the block ends
    normally, removed when it raises (the block's error is the one that propagates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
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


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns, for the terminal: the first column left-aligned,
    the others right-aligned; floats with 4 significant digits."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines = [line(r) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
