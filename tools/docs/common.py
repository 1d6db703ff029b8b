"""What every block renderer uses: the errors, reading a source file, a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DocsError(Exception):
    """A source that cannot be read, or a document whose blocks are broken: names the file."""


class NotProduced(Exception):  # noqa: N818 (a state, not a failure: the block says so)
    """A measured source that does not exist yet (``path``, written by ``command``)."""

    def __init__(self, path: str, command: str):
        super().__init__(path)
        self.path, self.command = path, command


# --- reading the sources --------------------------------------------------------------------------


def read_json(root: Path, relative: str, command: str) -> Any:
    path = root / relative
    if not path.exists():
        raise NotProduced(relative, command)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DocsError(f"{relative}: not readable JSON ({err})") from None


def field_of(tree: Any, relative: str, *keys: str) -> Any:
    """``tree[k1][k2]...``; a missing key is an error naming the file and the key."""
    for i, key in enumerate(keys):
        if not isinstance(tree, dict) or key not in tree:
            raise DocsError(f"{relative}: expected the key {'.'.join(keys[:i + 1])}")
        tree = tree[key]
    return tree


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}"
