"""What every block renderer uses: the errors, reading a source file, a markdown table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from pipeline.params import dotted


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
    value = dotted(tree, keys, default=DocsError)
    if value is DocsError:
        raise DocsError(f"{relative}: expected the key {'.'.join(keys)}")
    return value


WIDTH = 100  # generated prose is wrapped at this many columns (tables and pictures are not)


def wrap(text: str, width: int = WIDTH) -> str:
    """A generated block's markdown with its paragraphs and list items wrapped at ``width``
    columns (a list item's continuation indented two spaces); tables, pictures, headings and
    fenced code stay as they are. Markdown renders the wrapped text as before."""
    def fill(line: str, indent: str = "") -> str:
        return textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False)

    out = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith(("|", "![", "#", "```", "<!--")) for line in lines):
            out.append(block)
            continue
        wrapped, paragraph = [], []
        for line in [*lines, "- "]:  # a last item flushes the paragraph before it
            if line.startswith("- "):
                if paragraph:
                    wrapped.append(fill(" ".join(paragraph)))
                    paragraph = []
                wrapped.append(fill(line, "  "))
            else:
                paragraph.append(line)
        out.append("\n".join(wrapped[:-1]))
    return "\n\n".join(out)
